# expect: uncheckable -- re-reads the input 2^30 times (a pathological kernel that would run for hours): its streams at any check size are terabytes, past the interpreter's caps, so it is refused before anything runs
kernel softmax_runaway(x: f32[M, N]) -> (y: f32[M, N]) {
  sizes R = 4
  sizes LOTS = 1073741824
  fn keep(acc, t) = t
  fn softmax(t) = exp(t - max(t, axis=1)) / sum(exp(t - max(t, axis=1)), axis=1)
  xs = load(x, tile=[R, N], repeat=LOTS, at=1)  # [M/R, LOTS] of f32[R, N]
  last = accum(xs, rank=1, init=zeros([R, N]), fn=keep)  # [M/R]
  ys = map(last, fn=softmax)
  store(y, ys)
}
