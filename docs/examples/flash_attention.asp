# Attention softmax(Q K^T / sqrt(D)) V with online softmax (flash-style): K and V of each
# head are held on chip and streamed once per query block; scores never reach HBM.
kernel flash_attention(q: f32[B, H, S, D], k: f32[B, H, S, D], v: f32[B, H, S, D]) -> (o: f32[B, H, S, D]) {
  sizes B = 1
  sizes H = 4
  sizes S = 256
  sizes D = 64
  sizes BQ = 64
  sizes BK = 64
  fn step(m, l, acc, qt, kt, vt) {
    let s = matmul(qt, transpose(kt)) * rsqrt(D)
    let m2 = maximum(m, max(s, axis=1))
    let p = exp(s - m2)
    let c = exp(m - m2)
    return (m2, l * c + sum(p, axis=1), acc * c + matmul(p, vt))
  }
  fn finish(l, acc) = acc / l
  qs = load(q, tile=[1, 1, BQ, D], par=2)  # [B, H, S/BQ]
  qr = repeat(qs, S / BK)  # [.., S/BQ, S/BK]
  ks = load(k, tile=[1, 1, BK, D], par=2)
  kb = bufferize(ks, rank=1)  # one buffer per head
  kr = streamify(kb, repeat=S / BQ)
  vs = load(v, tile=[1, 1, BK, D], par=2)
  vb = bufferize(vs, rank=1)
  vr = streamify(vb, repeat=S / BQ)
  _, l, acc = accum(qr, kr, vr, rank=1, init=(full([BQ, 1], -inf), zeros([BQ, 1]), zeros([BQ, D])), fn=step, par=16)
  os = map(l, acc, fn=finish, par=4)
  store(o, os, par=2)
}
