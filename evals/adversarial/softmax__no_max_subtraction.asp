# expect: nonfinite -- exp(x) / sum(exp(x)) without subtracting the row maximum: inf/inf = NaN once logits pass ~88, which the task's "large" inputs (normal x 100) reach
kernel softmax_naive(x: f32[M, N]) -> (y: f32[M, N]) {
  sizes R = 4
  fn softmax(t) = exp(t) / sum(exp(t), axis=1)
  xs = load(x, tile=[R, N])
  ys = map(xs, fn=softmax)
  store(y, ys)
}
