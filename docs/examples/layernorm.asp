# LayerNorm over the last dimension: whole rows per tile, weight and bias read once and
# repeated on chip for every row block.
kernel layernorm(x: f32[M, N], w: f32[N], b: f32[N]) -> (y: f32[M, N]) {
  sizes M = 256
  sizes N = 1024
  sizes R = 4
  fn ln(t, g, c) {
    let mu = mean(t, axis=1)
    let d = t - mu
    let var = mean(d * d, axis=1)
    return d * rsqrt(var + 1e-05) * g + c
  }
  xs = load(x, tile=[R, N], par=4)  # [M/R] of f32[R, N]
  ws = load(w, tile=[N])  # one tile: a rank-0 stream
  bs = load(b, tile=[N])
  wr = repeat(ws, M / R)
  br = repeat(bs, M / R)
  ys = map(xs, wr, br, fn=ln, par=8)
  store(y, ys, par=4)
}
