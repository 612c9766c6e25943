# expect: mismatch -- applies the bias but not the weight (as if the weight were all ones, its initial value)
kernel layernorm_noweight(x: f32[B, S, N], w: f32[N], b: f32[N]) -> (y: f32[B, S, N]) {
  sizes R = 4
  fn ln(t, g, c) {
    let mu = mean(t, axis=1)
    let d = t - mu
    return d * rsqrt(mean(d * d, axis=1) + 1e-05) + c + 0 * g
  }
  xs = load(x, tile=[1, R, N])
  ws = load(w, tile=[N])
  bs = load(b, tile=[N])
  wb = repeat(ws, B)
  wr = repeat(wb, S / R)
  bb = repeat(bs, B)
  br = repeat(bb, S / R)
  ys = map(xs, wr, br, fn=ln)
  store(y, ys)
}
