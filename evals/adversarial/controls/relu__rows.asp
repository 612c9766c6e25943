# expect: verified -- control: the tiling of relu__sign_by_division with relu itself (exact zeros in the inputs are fine)
kernel relu_rows(x: f32[M, N]) -> (y: f32[M, N]) {
  sizes R = 4
  fn r(t) = relu(t)
  xs = load(x, tile=[R, N], par=4)
  ys = map(xs, fn=r, par=16)
  store(y, ys, par=4)
}
