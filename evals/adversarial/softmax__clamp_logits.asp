# expect: mismatch -- clamps the logits to [-8, 8] (a lookup-table-friendly range): exact on normal and uniform inputs, which never leave it, wrong on heavy-tailed inputs whose large logits dominate their rows
kernel softmax_clamped(x: f32[M, N]) -> (y: f32[M, N]) {
  sizes R = 4
  fn softmax(t) {
    let c = minimum(maximum(t, -8.0), 8.0)
    let e = exp(c - max(c, axis=1))
    return e / sum(e, axis=1)
  }
  xs = load(x, tile=[R, N])
  ys = map(xs, fn=softmax)
  store(y, ys)
}
