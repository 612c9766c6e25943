# expect: mismatch -- softmax normalised per column tile (max and sum over T = 256 columns, not over the row): right wherever one tile covers the row, as at the sidecar's 64/128-wide rows once T was shrunk to fit them, wrong at the timed 4096-wide rows (16 tiles)
kernel softmax_per_tile(x: f32[M, N]) -> (y: f32[M, N]) {
  sizes R = 4
  sizes T = 256
  fn softmax(t) {
    let e = exp(t - max(t, axis=1))
    return e / sum(e, axis=1)
  }
  xs = load(x, tile=[R, T], par=4)  # [M/R, N/T] of f32[R, T]
  ys = map(xs, fn=softmax, par=16)
  store(y, ys, par=4)
}
