# expect: mismatch -- prefix sums restarted in every column tile of T = 512 (no carry between tiles): right whenever one tile covers the row, as at the sidecar's 64/128-wide rows once T was shrunk, wrong on 7 of the 8 tiles of a timed 4096-wide row
kernel cumsum_no_carry(x: f32[M, N]) -> (y: f32[M, N]) {
  sizes R = 4
  sizes T = 512
  fn cs(t) = cumsum(t, axis=1)
  xs = load(x, tile=[R, T], par=4)  # [M/R, N/T] of f32[R, T]
  ys = map(xs, fn=cs, par=16)
  store(y, ys, par=4)
}
