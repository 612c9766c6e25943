# expect: charged -- f32 matmul as a SIMD broadcast-multiply + reduce instead of the systolic array: once credited above the chip's f32 peak, now timed at it
kernel matmul(a: f32[M, K], b: f32[K, N]) -> (c: f32[M, N]) {
  sizes TM = 512
  sizes TN = 512
  sizes TK = 2
  fn mac(acc, x, y) = acc + reshape(sum(reshape(x, shape=[TM, TK, 1]) * reshape(y, shape=[1, TK, TN]), axis=1), shape=[TM, TN])
  xa = load(a, tile=[TM, TK], repeat=N / TN, at=1, par=8)
  xb = load(b, tile=[TK, TN], order=[1, 0], repeat=M / TM, at=0, par=8)
  cs = accum(xa, xb, rank=1, init=zeros([TM, TN]), fn=mac, par=500)
  store(c, cs)
}
