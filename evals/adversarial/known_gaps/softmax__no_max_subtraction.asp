# expect: nonfinite -- KNOWN GAP (still verifies): exp(x) / sum(exp(x)) without subtracting the row maximum overflows to inf/inf = NaN only for logits above ~88; the heavy-tailed check inputs (Student-t, 2 dof) rarely reach that at the small correctness sizes
kernel softmax_naive(x: f32[M, N]) -> (y: f32[M, N]) {
  sizes R = 4
  fn softmax(t) = exp(t) / sum(exp(t), axis=1)
  xs = load(x, tile=[R, N])
  ys = map(xs, fn=softmax)
  store(y, ys)
}
