# C = A @ B with TM x TN output tiles accumulated over K in TK steps. A's row panel and
# B's column panel are re-read from HBM for every output tile (repeat= on the load).
kernel gemm(a: f32[M, K], b: f32[K, N]) -> (c: f32[M, N]) {
  sizes M = 512
  sizes N = 512
  sizes K = 512
  sizes TM = 128
  sizes TN = 128
  sizes TK = 128
  fn mac(acc, x, y) = acc + matmul(x, y)
  xa = load(a, tile=[TM, TK], repeat=N / TN, at=1, par=4)  # [M/TM, N/TN, K/TK]
  xb = load(b, tile=[TK, TN], order=[1, 0], repeat=M / TM, at=0, par=4)  # [M/TM, N/TN, K/TK]
  cs = accum(xa, xb, rank=1, init=zeros([TM, TN]), fn=mac, par=16)  # [M/TM, N/TN] of f32[TM, TN]
  store(c, cs, par=4)
}
