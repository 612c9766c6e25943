# expect: mismatch -- C = A @ B from the first K-block only (each step's product replaces the accumulator only at step 0): right whenever one block of TK = 128 covers K, as at the sidecar's K = 64/128 once TK was shrunk to fit, wrong at the timed K = 4096 (32 blocks)
kernel gemm_first_k(a: f32[M, K], b: f32[K, N]) -> (c: f32[M, N]) {
  sizes TM = 32
  sizes TN = 32
  sizes TK = 128
  fn first(acc, x, y) = where(pos(2) < 1, matmul(x, y), acc)
  xa = load(a, tile=[TM, TK], repeat=N / TN, at=1, par=4)
  xb = load(b, tile=[TK, TN], order=[1, 0], repeat=M / TM, at=0, par=4)
  cs = accum(xa, xb, rank=1, init=zeros([TM, TN]), fn=first, par=16)
  store(c, cs, par=4)
}
