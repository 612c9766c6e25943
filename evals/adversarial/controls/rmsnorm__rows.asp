# expect: verified -- control: RMSNorm on the task's [BATCH, SEQ, HIDDEN] input, whole rows per tile
kernel rmsnorm(x: f32[B, S, N], w: f32[N]) -> (y: f32[B, S, N]) {
  sizes R = 4
  fn rms(t, g) = t * rsqrt(mean(t * t, axis=1) + 1e-06) * g
  xs = load(x, tile=[1, R, N], par=4)  # [B, S/R] of f32[R, N]
  ws = load(w, tile=[N])  # [] of f32[N]
  wb = repeat(ws, B)
  wr = repeat(wb, S / R)  # [B, S/R]
  ys = map(xs, wr, fn=rms, par=8)
  store(y, ys, par=4)
}
