# An attention block sharded by heads, with grouped-query attention: each of the P sockets
# projects its H/P query heads and KVH/P key/value heads (wq, wk, wv split by columns), attends
# within them, and multiplies by its rows of the output projection wo; one all_reduce adds the
# P partial outputs. Query head h uses key/value head h / (H/KVH). Queries go in blocks of BQ
# rows, heads innermost, so the output projection sums a block's heads as they come.
kernel attention_heads(x: f32[S, D], wq: f32[D, H * HD] @split(1), wk: f32[D, KVH * HD] @split(1), wv: f32[D, KVH * HD] @split(1), wo: f32[H * HD, D] @split(0)) -> (y: f32[S, D]) {
  sockets P = 2
  sizes S = 128
  sizes D = 256
  sizes H = 8
  sizes KVH = 4
  sizes HD = 32
  sizes BQ = 16
  fn proj(a, w) = matmul(a, w)
  fn attend(q, k, v) {
    let s = matmul(q, transpose(k)) * rsqrt(HD)
    let p = exp(s - max(s, axis=1))
    return matmul(p / sum(p, axis=1), v)
  }
  fn mac(acc, o, w) = acc + matmul(o, w)
  xq = load(x, tile=[BQ, D], repeat=H / P, at=1)  # [S/BQ, H/P] of f32[BQ, D]
  qw = load(wq, tile=[D, HD], repeat=S / BQ, at=0)  # [S/BQ, H/P]: this socket's query heads
  qs = map(xq, qw, fn=proj, par=4)  # [S/BQ, H/P] of f32[BQ, HD]
  xk = load(x, tile=[S, D], repeat=KVH / P)  # [KVH/P] of f32[S, D]
  kw = load(wk, tile=[D, HD])  # [KVH/P]: this socket's key heads
  ks = map(xk, kw, fn=proj, par=4)  # [KVH/P] of f32[S, HD]
  xv = load(x, tile=[S, D], repeat=KVH / P)
  vw = load(wv, tile=[D, HD])
  vs = map(xv, vw, fn=proj, par=4)
  kq = repeat(ks, H / KVH)  # [KVH/P, H/KVH]: each key head once per query head of its group
  vq = repeat(vs, H / KVH)
  kg = flatten(kq, dims=[0, 1])  # [H/P]
  vg = flatten(vq, dims=[0, 1])
  kb = bufferize(kg, rank=1)  # [] of buf[H/P]: the key of every local query head, on chip
  vb = bufferize(vg, rank=1)
  kr = streamify(kb, repeat=S / BQ)  # [S/BQ, H/P]
  vr = streamify(vb, repeat=S / BQ)
  os = map(qs, kr, vr, fn=attend, par=4)  # [S/BQ, H/P] of f32[BQ, HD]
  ow = load(wo, tile=[HD, D], repeat=S / BQ, at=0)  # [S/BQ, H/P] of f32[HD, D]: this socket's rows of wo
  part = accum(os, ow, rank=1, init=zeros([BQ, D]), fn=mac, par=4)  # [S/BQ] of f32[BQ, D]: a partial y
  ys = all_reduce(part)  # the sum over the P sockets
  store(y, ys)
}
