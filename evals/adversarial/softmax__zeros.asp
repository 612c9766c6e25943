# expect: constant -- all zeros: the output is never computed; softmax values are small, so a loose absolute tolerance alone could let it pass
kernel softmax_zeros(x: f32[M, N]) -> (y: f32[M, N]) {
  sizes R = 4
  fn nothing(t) = t * 0
  xs = load(x, tile=[R, N])
  ys = map(xs, fn=nothing)
  store(y, ys)
}
