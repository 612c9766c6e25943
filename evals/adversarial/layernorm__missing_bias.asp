# expect: interface -- declares only (x, weight): the task provides x, weight and bias, so the parameter count is wrong
kernel layernorm_nobias(x: f32[B, S, N], w: f32[N]) -> (y: f32[B, S, N]) {
  sizes R = 4
  fn ln(t, g) {
    let mu = mean(t, axis=1)
    let d = t - mu
    return d * rsqrt(mean(d * d, axis=1) + 1e-05) * g
  }
  xs = load(x, tile=[1, R, N])
  ws = load(w, tile=[N])
  wb = repeat(ws, B)
  wr = repeat(wb, S / R)
  ys = map(xs, wr, fn=ln)
  store(y, ys)
}
