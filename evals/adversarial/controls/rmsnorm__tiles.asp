# expect: verified -- control: the tiling of rmsnorm__per_tile (R = 4 rows, T = 512 hidden units) with the mean square accumulated over all of a row's tiles first
kernel rmsnorm_tiles(x: f32[B, S, N], w: f32[N]) -> (y: f32[B, S, N]) {
  sizes R = 4
  sizes T = 512
  fn sq(acc, t) = acc + sum(t * t, axis=1)
  fn rms(t, ss, g) = t * rsqrt(ss / N + 1e-06) * g
  xs = load(x, tile=[1, R, T], par=4)
  xa, xb = copy(xs)
  ss = accum(xa, rank=1, init=zeros([R, 1]), fn=sq, par=8)
  rows = bufferize(xb, rank=1)
  xr = streamify(rows)
  sr = repeat(ss, N / T)
  ws = load(w, tile=[T], repeat=[B, S / R], at=[0, 1])
  ys = map(xr, sr, ws, fn=rms, par=16)
  store(y, ys, par=4)
}
