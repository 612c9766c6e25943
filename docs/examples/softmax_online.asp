# Row softmax reading x once: one online pass keeps a running max m and a running sum l
# (rescaled whenever m grows) while the row is also held on chip; the buffered row is then
# streamed again to normalise. 1 read + 1 write of HBM.
kernel softmax_online(x: f32[M, N]) -> (y: f32[M, N]) {
  sizes M = 256
  sizes N = 1024
  sizes R = 4
  sizes T = 256
  fn online(m, l, t) {
    let m2 = maximum(m, max(t, axis=1))
    return (m2, l * exp(m - m2) + sum(exp(t - m2), axis=1))
  }
  fn normalise(t, m, l) = exp(t - m) / l
  xs = load(x, tile=[R, T], par=4)  # [M/R, N/T] of f32[R, T]
  xa, xb = copy(xs)
  m, l = accum(xa, rank=1, init=(full([R, 1], -inf), zeros([R, 1])), fn=online, par=12)  # f32 ops: 12 keep up with HBM
  rows = bufferize(xb, rank=1, par=8)  # [M/R] of buf[N/T] of f32[R, T], banked over 8 PMUs
  xr = streamify(rows, par=8)
  mr = repeat(m, N / T)
  lr = repeat(l, N / T)
  ys = map(xr, mr, lr, fn=normalise, par=8)
  store(y, ys, par=4)
}
