# expect: verified -- control: the tiling of argmax_dim__bf16_compare comparing in f32 (near-ties resolved as the task does)
kernel argmax_rows(x: f32[M, N]) -> (y: i32[M]) {
  sizes R = 4
  fn best(t) = reshape(argmax(t, axis=1), shape=[R])
  xs = load(x, tile=[R, N], par=4)
  ys = map(xs, fn=best, par=16)
  store(y, ys, par=4)
}
