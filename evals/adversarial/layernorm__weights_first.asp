# expect: interface -- puts the weights before the input (w, b, x): parameters are the task's inputs first, then its weights in capture order
kernel layernorm_wfirst(w: f32[N], b: f32[N], x: f32[B, S, N]) -> (y: f32[B, S, N]) {
  sizes R = 4
  fn ln(t, g, c) {
    let mu = mean(t, axis=1)
    let d = t - mu
    return d * rsqrt(mean(d * d, axis=1) + 1e-05) * g + c
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
