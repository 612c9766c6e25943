# Rotary position embedding, NeoX layout: out = x * cos + rotate_half(x) * sin, where
# rotate_half(x) = concat(-x[D/2:], x[:D/2]).
kernel rope_neox(x: f32[S, H, D], cos: f32[S, D], sin: f32[S, D]) -> (y: f32[S, H, D]) {
  sizes S = 256
  sizes H = 8
  sizes D = 64
  fn rope(t, c, s) {
    let lo = slice(t, axis=1, start=0, stop=D / 2)
    let hi = slice(t, axis=1, start=D / 2)
    return t * c + concat(-hi, lo, axis=1) * s
  }
  xs = load(x, tile=[1, H, D], par=4)  # [S] of f32[H, D]: all heads of one position
  cs = load(cos, tile=[1, D])  # [S] of f32[1, D]
  ss = load(sin, tile=[1, D])
  ys = map(xs, cs, ss, fn=rope, par=4)
  store(y, ys, par=4)
}
