# expect: mismatch -- keeps the f32 interface but casts to bf16 inside and computes there: the lower precision shows in the values
kernel softmax_bf16_inside(x: f32[M, N]) -> (y: f32[M, N]) {
  sizes R = 4
  fn softmax(t) {
    let h = cast(t, bf16)
    let e = exp(h - max(h, axis=1))
    return cast(e / sum(e, axis=1), f32)
  }
  xs = load(x, tile=[R, N])
  ys = map(xs, fn=softmax)
  store(y, ys)
}
