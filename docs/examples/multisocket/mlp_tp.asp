# Tensor-parallel MLP y = relu(x @ w1) @ w2 on P sockets (Megatron-style): w1 is split by
# columns and w2 by rows, so each socket computes relu(x @ w1[:, shard]) @ w2[shard, :], a
# partial sum of y, with no communication until one all_reduce adds the P partial sums.
# x and y are whole on every socket.
kernel mlp_tp(x: f32[M, D], w1: f32[D, F] @split(1), w2: f32[F, D] @split(0)) -> (y: f32[M, D]) {
  sockets P = 2
  sizes M = 64
  sizes D = 256
  sizes F = 1024
  sizes TM = 8
  sizes TF = 64
  fn up(a, w) = relu(matmul(a, w))
  fn mac(acc, h, w) = acc + matmul(h, w)
  xs = load(x, tile=[TM, D], repeat=F / P / TF, at=1)  # [M/TM, F/P/TF] of f32[TM, D]
  w1s = load(w1, tile=[D, TF], repeat=M / TM, at=0, par=4)  # this socket's w1: [D, F/P]
  hs = map(xs, w1s, fn=up, par=8)  # [M/TM, F/P/TF] of f32[TM, TF]
  w2s = load(w2, tile=[TF, D], repeat=M / TM, at=0, par=4)  # this socket's w2: [F/P, D]
  part = accum(hs, w2s, rank=1, init=zeros([TM, D]), fn=mac, par=8)  # [M/TM] of f32[TM, D]: a partial y
  ys = all_reduce(part)  # the sum over the P sockets, tile by tile as they come
  store(y, ys)
}
