# expect: shape -- declares its result as [M, 1] (one value per row, e.g. just the row maxima) instead of the task's [M, N]
kernel softmax_rowmax(x: f32[M, N]) -> (y: f32[M, 1]) {
  sizes R = 4
  fn rowmax(t) = max(t, axis=1)
  xs = load(x, tile=[R, N])
  ys = map(xs, fn=rowmax)
  store(y, ys)
}
