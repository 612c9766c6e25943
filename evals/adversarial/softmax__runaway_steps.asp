# expect: limit -- folds every element 1024 times through an accumulator the interpreter must step one element at a time (small streams, over half a million steps): the interpreter's step limit stops it
kernel softmax_steps(x: f32[M, N]) -> (y: f32[M, N]) {
  sizes LOTS = 1024
  fn keep(acc, t) = acc * 0.5 + t
  fn out(t, z) = t + 0 * z
  xs = load(x, tile=[1, 1], repeat=LOTS, at=0)          # [LOTS, M, N] of f32[1, 1]
  s = accum(xs, rank=3, init=zeros([1, 1]), fn=keep)  # [] of f32[1, 1]
  sm = repeat(s, M)                                    # [M]
  x2 = load(x, tile=[1, N])                            # [M] of f32[1, N]
  ys = map(x2, sm, fn=out)
  store(y, ys)
}
