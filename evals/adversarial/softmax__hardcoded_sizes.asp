# expect: interface -- a correct softmax hard-wired to the first correctness size set ([8, 64]): checks at the second size set ([16, 128]) cannot bind it
kernel softmax_fixed(x: f32[8, 64]) -> (y: f32[8, 64]) {
  fn softmax(t) = exp(t - max(t, axis=1)) / sum(exp(t - max(t, axis=1)), axis=1)
  xs = load(x, tile=[4, 64])
  ys = map(xs, fn=softmax)
  store(y, ys)
}
