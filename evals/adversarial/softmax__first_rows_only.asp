# expect: nonfinite -- computes softmax for the first H rows only and scatters them; the other rows are never written, so they keep the NaN poison the outputs start with (a stale/uninitialised buffer)
kernel softmax_first_rows(x: f32[M, N]) -> (y: f32[M, N]) {
  sizes H = 4
  fn keep_first(acc, t) = where(pos(0) == 0, t, acc)
  fn softmax(t) = exp(t - max(t, axis=1)) / sum(exp(t - max(t, axis=1)), axis=1)
  fn first_index(t) = reshape(pos(0), shape=[1])
  xs = load(x, tile=[H, N])  # [M/H] of f32[H, N]
  first = accum(xs, rank=1, init=zeros([H, N]), fn=keep_first)  # [] of f32[H, N]: rows 0..H-1
  f1 = promote(first)  # [1]
  a, b = copy(f1)
  ys = map(a, fn=softmax)
  idx = map(b, fn=first_index)  # [1] of i32[1]: block 0
  scatter(y, idx, ys)
}
