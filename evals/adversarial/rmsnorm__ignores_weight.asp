# expect: mismatch -- normalises but never applies the learned weight (loads it only to satisfy the interface); the task perturbs the weight away from 1 so this is caught
kernel rmsnorm_noweight(x: f32[B, S, N], w: f32[N]) -> (y: f32[B, S, N]) {
  sizes R = 4
  fn rms(t, g) = t * rsqrt(mean(t * t, axis=1) + 1e-06) + 0 * g
  xs = load(x, tile=[1, R, N])
  ws = load(w, tile=[N])
  wb = repeat(ws, B)
  wr = repeat(wb, S / R)
  ys = map(xs, wr, fn=rms)
  store(y, ys)
}
