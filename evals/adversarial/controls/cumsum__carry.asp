# expect: verified -- control: the tiling of cumsum__no_carry (R = 4 rows, T = 512 columns) carrying each row's running sum from tile to tile with scan
kernel cumsum_carry(x: f32[M, N]) -> (y: f32[M, N]) {
  sizes R = 4
  sizes T = 512
  fn step(prev, t) = cumsum(t, axis=1) + slice(prev, axis=1, start=T - 1)
  xs = load(x, tile=[R, T], par=4)
  ys = scan(xs, rank=1, init=zeros([R, T]), fn=step, par=16)
  store(y, ys, par=4)
}
