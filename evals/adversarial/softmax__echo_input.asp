# expect: mismatch -- echoes the input unchanged (a copy kernel passed off as softmax)
kernel softmax_echo(x: f32[M, N]) -> (y: f32[M, N]) {
  sizes R = 4
  xs = load(x, tile=[R, N])
  store(y, xs)
}
