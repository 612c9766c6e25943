# expect: compile -- uses the loaded stream twice without copy (an affine-rule violation the checker rejects before anything runs)
kernel softmax_twice(x: f32[M, N]) -> (y: f32[M, N]) {
  sizes R = 4
  fn rowmax(t) = max(t, axis=1)
  fn normalise(t, m) = exp(t - m) / sum(exp(t - m), axis=1)
  xs = load(x, tile=[R, N])
  ms = map(xs, fn=rowmax)
  ys = map(xs, ms, fn=normalise)
  store(y, ys)
}
