# expect: mismatch -- RMSNorm whose mean square is taken over each tile of T = 512 hidden units instead of the whole row: right whenever one tile covers HIDDEN, as at the sidecar's 64/128 once T was shrunk, wrong at the timed HIDDEN = 4096 (8 tiles)
kernel rmsnorm_per_tile(x: f32[B, S, N], w: f32[N]) -> (y: f32[B, S, N]) {
  sizes R = 4
  sizes T = 512
  fn rms(t, g) = t * rsqrt(mean(t * t, axis=1) + 1e-06) * g
  xs = load(x, tile=[1, R, T], par=4)                          # [B, S/R, N/T] of f32[R, T]
  ws = load(w, tile=[T], repeat=[B, S / R], at=[0, 1])          # [B, S/R, N/T] of f32[T]
  ys = map(xs, ws, fn=rms, par=16)
  store(y, ys, par=4)
}
