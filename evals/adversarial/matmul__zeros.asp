# expect: constant -- returns zeros without multiplying (reads only A, so its timing would look cheap)
kernel gemm_zeros(a: f32[M, K], b: f32[K, N]) -> (c: f32[M, N]) {
  sizes TM = 32
  fn nothing(t) = zeros([TM, N])
  xa = load(a, tile=[TM, K])
  cs = map(xa, fn=nothing)
  store(c, cs)
}
