# expect: compile -- does not parse (a Python-style loop: ASP has no control flow)
kernel softmax_loop(x: f32[M, N]) -> (y: f32[M, N]) {
  sizes R = 4
  for i in range(M):
    y[i] = softmax(x[i])
}
