# expect: nonfinite -- softmax stabilised by the maximum of the first column block only (exp(x - m) with m the max of the first T = 256 columns): exact in real arithmetic and right at the sidecar's sizes (one block per row once T was shrunk), but exp overflows to inf, and inf/inf = NaN, on rows whose maximum lies in a later block more than 88 above the first block's
kernel softmax_first_block_max(x: f32[M, N]) -> (y: f32[M, N]) {
  sizes R = 4
  sizes T = 256
  fn first(m, l, t) {
    let m2 = where(pos(1) < 1, max(t, axis=1), m)
    return (m2, l + sum(exp(t - m2), axis=1))
  }
  fn normalise(t, m, l) = exp(t - m) / l
  xs = load(x, tile=[R, T], par=4)
  xa, xb = copy(xs)
  m, l = accum(xa, rank=1, init=(full([R, 1], -inf), zeros([R, 1])), fn=first, par=8)
  rows = bufferize(xb, rank=1)
  xr = streamify(rows)
  mr = repeat(m, N / T)
  lr = repeat(l, N / T)
  ys = map(xr, mr, lr, fn=normalise, par=8)
  store(y, ys, par=4)
}
