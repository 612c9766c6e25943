# expect: interface -- declares (b, a) instead of (a, b): the shapes cannot be solved consistently (K would be two sizes at once)
kernel gemm_swapped(b: f32[K, N], a: f32[M, K]) -> (c: f32[M, N]) {
  sizes TM = 128
  sizes TN = 128
  sizes TK = 128
  fn mac(acc, x, y) = acc + matmul(x, y)
  xa = load(a, tile=[TM, TK], repeat=N / TN, at=1)
  xb = load(b, tile=[TK, TN], order=[1, 0], repeat=M / TM, at=0)
  cs = accum(xa, xb, rank=1, init=zeros([TM, TN]), fn=mac)
  store(c, cs)
}
