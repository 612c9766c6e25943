# expect: charged -- the rows are bufferized in one section and streamed again in the next: once charged 4 bytes per buffer reference across the reconfiguration, now the buffers' whole contents go to HBM and back and are reloaded into PMUs
kernel softmax_online(x: f32[M, N]) -> (y: f32[M, N]) {
  sizes M = 256
  sizes N = 1024
  sizes R = 4
  sizes T = 256
  fn online(m, l, t) {
    let m2 = maximum(m, max(t, axis=1))
    return (m2, l * exp(m - m2) + sum(exp(t - m2), axis=1))
  }
  fn recip(l) = 1.0 / l
  fn normalise(t, m, r) = exp(t - m) * r
  xs = load(x, tile=[R, T], par=8)
  xa, xb = copy(xs)
  m, l = accum(xa, rank=1, init=(full([R, 1], -inf), zeros([R, 1])), fn=online, par=500)
  rows = bufferize(xb, rank=1, par=8)
  r = map(l, fn=recip, par=64)
  xr = streamify(rows, par=8)
  mr = repeat(m, N / T)
  rr = repeat(r, N / T)
  ys = map(xr, mr, rr, fn=normalise, par=16)
  store(y, ys, par=8)
}
