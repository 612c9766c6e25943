# expect: verified -- control: the tiling of softmax__per_tile_norm and softmax__first_block_max (R = 4 rows, T = 256 columns) with a correct online max/sum across the row's tiles
kernel softmax_tiles(x: f32[M, N]) -> (y: f32[M, N]) {
  sizes R = 4
  sizes T = 256
  fn online(m, l, t) {
    let m2 = maximum(m, max(t, axis=1))
    return (m2, l * exp(m - m2) + sum(exp(t - m2), axis=1))
  }
  fn normalise(t, m, l) = exp(t - m) / l
  xs = load(x, tile=[R, T], par=4)
  xa, xb = copy(xs)
  m, l = accum(xa, rank=1, init=(full([R, 1], -inf), zeros([R, 1])), fn=online, par=8)
  rows = bufferize(xb, rank=1)
  xr = streamify(rows)
  mr = repeat(m, N / T)
  lr = repeat(l, N / T)
  ys = map(xr, mr, lr, fn=normalise, par=8)
  store(y, ys, par=4)
}
