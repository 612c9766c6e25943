# expect: verified -- control: LayerNorm with affine weight and bias on [BATCH, SEQ, HIDDEN]
kernel layernorm(x: f32[B, S, N], w: f32[N], b: f32[N]) -> (y: f32[B, S, N]) {
  sizes R = 4
  fn ln(t, g, c) {
    let mu = mean(t, axis=1)
    let d = t - mu
    let var = mean(d * d, axis=1)
    return d * rsqrt(var + 1e-05) * g + c
  }
  xs = load(x, tile=[1, R, N], par=4)  # [B, S/R] of f32[R, N]
  ws = load(w, tile=[N])
  bs = load(b, tile=[N])
  wb = repeat(ws, B)
  wr = repeat(wb, S / R)
  bb = repeat(bs, B)
  br = repeat(bb, S / R)
  ys = map(xs, wr, br, fn=ln, par=8)
  store(y, ys, par=4)
}
