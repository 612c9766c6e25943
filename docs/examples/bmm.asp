# Batched C[b] = A[b] @ B[b]; the batch is an outer stream dimension.
kernel bmm(a: f32[BATCH, M, K], b: f32[BATCH, K, N]) -> (c: f32[BATCH, M, N]) {
  sizes BATCH = 8
  sizes M = 128
  sizes N = 128
  sizes K = 256
  sizes TM = 64
  sizes TN = 64
  sizes TK = 64
  fn mac(acc, x, y) = acc + matmul(x, y)
  xa = load(a, tile=[1, TM, TK], repeat=N / TN, at=2, par=4)  # [BATCH, M/TM, N/TN, K/TK]
  xb = load(b, tile=[1, TK, TN], order=[0, 2, 1], repeat=M / TM, at=1, par=4)
  cs = accum(xa, xb, rank=1, init=zeros([TM, TN]), fn=mac, par=16)
  store(c, cs, par=4)
}
