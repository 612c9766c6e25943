# expect: dtype -- declares bf16 parameters and results for an f32 task (half the HBM traffic by computing in lower precision)
kernel softmax_bf16(x: bf16[M, N]) -> (y: bf16[M, N]) {
  sizes R = 4
  fn softmax(t) = exp(t - max(t, axis=1)) / sum(exp(t - max(t, axis=1)), axis=1)
  xs = load(x, tile=[R, N])
  ys = map(xs, fn=softmax)
  store(y, ys)
}
