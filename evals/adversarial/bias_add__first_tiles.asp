# expect: mismatch -- the bias is added to the first column tile only (the other tiles pass x through): right whenever one tile of T = 256 columns covers the row, as at the sidecar's sizes once T was shrunk, wrong on 15 of the 16 tiles of a timed 4096-wide row
kernel bias_first_tiles(x: f32[M, N], b: f32[N]) -> (y: f32[M, N]) {
  sizes R = 8
  sizes T = 256
  fn add(t, c) = where(pos(1) < 1, t + c, t)
  xs = load(x, tile=[R, T], par=4)                 # [M/R, N/T] of f32[R, T]
  bs = load(b, tile=[T], repeat=M / R, at=0)       # [M/R, N/T] of f32[T]
  ys = map(xs, bs, fn=add, par=16)
  store(y, ys, par=4)
}
