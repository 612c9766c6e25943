# expect: mismatch -- exp replaced by its degree-8 Taylor polynomial and no max subtraction: accurate (within 1e-4) on U(-1, 1) inputs, wrong on normal and heavy-tailed ones
kernel softmax_poly(x: f32[M, N]) -> (y: f32[M, N]) {
  sizes R = 4
  fn softmax(t) {
    let p = 1 + t * (1 + t * (0.5 + t * (1 / 6 + t * (1 / 24 + t * (1 / 120 + t * (1 / 720 + t * (1 / 5040 + t / 40320)))))))
    return p / sum(p, axis=1)
  }
  xs = load(x, tile=[R, N])
  ys = map(xs, fn=softmax)
  store(y, ys)
}
