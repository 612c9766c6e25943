# expect: verified -- control: the tiling of bias_add__first_tiles (R = 8 rows, T = 256 columns) adding the bias to every tile
kernel bias_tiles(x: f32[M, N], b: f32[N]) -> (y: f32[M, N]) {
  sizes R = 8
  sizes T = 256
  fn add(t, c) = t + c
  xs = load(x, tile=[R, T], par=4)
  bs = load(b, tile=[T], repeat=M / R, at=0)
  ys = map(xs, bs, fn=add, par=16)
  store(y, ys, par=4)
}
