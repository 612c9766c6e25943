# RMSNorm: x * rsqrt(mean(x^2) + eps) * w, whole rows per tile.
kernel rmsnorm(x: f32[M, N], w: f32[N]) -> (y: f32[M, N]) {
  sizes M = 256
  sizes N = 1024
  sizes R = 4
  fn rms(t, g) = t * rsqrt(mean(t * t, axis=1) + 1e-06) * g
  xs = load(x, tile=[R, N], par=4)
  ws = load(w, tile=[N])
  wr = repeat(ws, M / R)
  ys = map(xs, wr, fn=rms, par=8)
  store(y, ys, par=4)
}
