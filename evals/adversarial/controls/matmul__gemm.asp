# expect: verified -- control: tiled C = A @ B accumulated over K (docs/examples/gemm.asp)
kernel gemm(a: f32[M, K], b: f32[K, N]) -> (c: f32[M, N]) {
  sizes TM = 128
  sizes TN = 128
  sizes TK = 128
  fn mac(acc, x, y) = acc + matmul(x, y)
  xa = load(a, tile=[TM, TK], repeat=N / TN, at=1, par=4)
  xb = load(b, tile=[TK, TN], order=[1, 0], repeat=M / TM, at=0, par=4)
  cs = accum(xa, xb, rank=1, init=zeros([TM, TN]), fn=mac, par=16)
  store(c, cs, par=4)
}
