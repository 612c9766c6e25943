# expect: mismatch -- clamps the inputs to [-1, 1] before normalising: exact on U(-1, 1) inputs (the clamp does nothing), wrong on normal and heavy-tailed inputs
kernel rmsnorm_clamp(x: f32[B, S, N], w: f32[N]) -> (y: f32[B, S, N]) {
  sizes R = 4
  fn rms(t, g) {
    let c = minimum(maximum(t, -1.0), 1.0)
    return c * rsqrt(mean(c * c, axis=1) + 1e-06) * g
  }
  xs = load(x, tile=[1, R, N])
  ws = load(w, tile=[N])
  wb = repeat(ws, B)
  wr = repeat(wb, S / R)
  ys = map(xs, wr, fn=rms)
  store(y, ys)
}
