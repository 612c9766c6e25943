# expect: mismatch -- f32 interface, but both operands are cast to bf16 for the product (the systolic array's fast rate): too imprecise for an f32 task
kernel gemm_bf16(a: f32[M, K], b: f32[K, N]) -> (c: f32[M, N]) {
  sizes TM = 128
  sizes TN = 128
  sizes TK = 128
  fn mac(acc, x, y) = acc + cast(matmul(cast(x, bf16), cast(y, bf16)), f32)
  xa = load(a, tile=[TM, TK], repeat=N / TN, at=1)
  xb = load(b, tile=[TK, TN], order=[1, 0], repeat=M / TM, at=0)
  cs = accum(xa, xb, rank=1, init=zeros([TM, TN]), fn=mac)
  store(c, cs)
}
