# expect: charged -- the scale vector sits in one PMU and streamify claims par=4096 read ports to re-read it for every row: once credited 4096 ports (4.4x), now the one PMU's ports
kernel mul_broadcast(x: f32[B, D], s: f32[D]) -> (y: f32[B, D]) {
  sizes B = 64
  sizes D = 2048
  sizes T = 1024
  fn mul(a, b) = a * b
  xs = load(x, tile=[1, T], par=8)
  ss = load(s, tile=[T])
  sb = bufferize(ss, rank=1)
  sr = streamify(sb, repeat=B, par=4096)
  ys = map(xs, sr, fn=mul, par=16)
  store(y, ys, par=8)
}
