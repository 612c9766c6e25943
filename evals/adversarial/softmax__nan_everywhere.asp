# expect: nonfinite -- writes NaN everywhere (a comparison-based check such as |c - r| > tol is False for NaN and would pass it)
kernel softmax_nan(x: f32[M, N]) -> (y: f32[M, N]) {
  sizes R = 4
  fn poison(t) = t * nan
  xs = load(x, tile=[R, N])
  ys = map(xs, fn=poison)
  store(y, ys)
}
