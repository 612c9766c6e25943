# expect: mismatch -- argmax taken over the row rounded to bf16 (half the bytes to compare): right wherever the row's two largest values differ by more than bf16's spacing, as in the normal, heavy-tailed and uniform draws, but near-ties round to equal values and the first of them wins
kernel argmax_bf16(x: f32[M, N]) -> (y: i32[M]) {
  sizes R = 4
  fn best(t) = reshape(argmax(cast(t, bf16), axis=1), shape=[R])
  xs = load(x, tile=[R, N], par=4)
  ys = map(xs, fn=best, par=16)
  store(y, ys, par=4)
}
