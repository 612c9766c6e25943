# expect: nonfinite -- ReLU computed as x * (1 + x / |x|) / 2: right for every non-zero input, which is all that normal, heavy-tailed and uniform draws ever give, but 0 / 0 = NaN where an input is exactly 0
kernel relu_div(x: f32[M, N]) -> (y: f32[M, N]) {
  sizes R = 4
  fn r(t) = t * (1 + t / abs(t)) / 2
  xs = load(x, tile=[R, N], par=4)
  ys = map(xs, fn=r, par=16)
  store(y, ys, par=4)
}
