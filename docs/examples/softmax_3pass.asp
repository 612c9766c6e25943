# Row softmax in three passes over HBM: row maxima, then sums of exponentials, then the
# normalised values. Each pass re-reads x (3 reads + 1 write): the unfused baseline shape.
kernel softmax_3pass(x: f32[M, N]) -> (y: f32[M, N]) {
  sizes M = 256
  sizes N = 1024
  sizes R = 4  # rows per tile
  sizes T = 256  # columns per tile
  fn row_max(acc, t) = maximum(acc, max(t, axis=1))
  fn sum_exp(acc, t, m) = acc + sum(exp(t - m), axis=1)
  fn normalise(t, m, l) = exp(t - m) / l
  x1 = load(x, tile=[R, T], par=4)  # [M/R, N/T] of f32[R, T]
  m = accum(x1, rank=1, init=full([R, 1], -inf), fn=row_max, par=4)  # [M/R] of f32[R, 1]
  m1, m2 = copy(m)
  x2 = load(x, tile=[R, T], par=4)
  m1r = repeat(m1, N / T)
  l = accum(x2, m1r, rank=1, init=zeros([R, 1]), fn=sum_exp, par=8)
  x3 = load(x, tile=[R, T], par=4)
  m2r = repeat(m2, N / T)
  lr = repeat(l, N / T)
  ys = map(x3, m2r, lr, fn=normalise, par=8)
  store(y, ys, par=4)
}
