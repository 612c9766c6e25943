# expect: verified -- control: the scale vector banked over 16 PMUs (bufferize par=16) and re-read through their 16 ports
kernel mul_broadcast(x: f32[B, D], s: f32[D]) -> (y: f32[B, D]) {
  sizes B = 64
  sizes D = 2048
  sizes T = 1024
  fn mul(a, b) = a * b
  xs = load(x, tile=[1, T], par=8)
  ss = load(s, tile=[T])
  sb = bufferize(ss, rank=1, par=16)
  sr = streamify(sb, repeat=B, par=16)
  ys = map(xs, sr, fn=mul, par=16)
  store(y, ys, par=8)
}
