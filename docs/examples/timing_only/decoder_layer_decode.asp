# One Llama-2-7B decoder layer at decode (one new token per sequence), fused into one
# kernel, bf16: RMSNorm, Q/K/V projections, NeoX RoPE, attention over a KV cache of S
# positions (the new token's k and v are already in it; they are also returned, kn and vn,
# for the host to append), O projection, residual, RMSNorm, SwiGLU MLP, residual.
# Weights stream from HBM once per token; activations never leave the chip. The Q/K/V
# projections emit one head at a time so attention starts on head 0 while head 1 is
# projected; the O and down projections take the heads / MLP blocks as they come (outer
# loop over K, the whole output row accumulated on chip).
kernel decoder_layer_decode(x: bf16[B, D], wn1: bf16[D], wq: bf16[D, D], wk: bf16[D, D], wv: bf16[D, D], cos: bf16[1, HD], sin: bf16[1, HD], kc: bf16[B, H, S, HD], vc: bf16[B, H, S, HD], wo: bf16[D, D], wn2: bf16[D], wg: bf16[D, F], wu: bf16[D, F], wd: bf16[F, D]) -> (y: bf16[B, D], kn: bf16[B, D], vn: bf16[B, D]) {
  sizes B = 1
  sizes D = 4096
  sizes H = 32
  sizes HD = 128
  sizes S = 4096
  sizes F = 11008
  sizes TK = 512
  sizes BK = 128
  sizes TF = 128
  fn rms(t, g) {
    let u = cast(t, f32)
    return cast(u * rsqrt(mean(u * u, axis=1) + 1e-05) * cast(g, f32), bf16)
  }
  fn ident(t) = t
  fn mac(acc, a, w) = acc + cast(matmul(a, w), f32)
  fn rope(t, c, s) {
    let lo = slice(t, axis=1, start=0, stop=HD / 2)
    let hi = slice(t, axis=1, start=HD / 2)
    return cast(t * cast(c, f32) + concat(-hi, lo, axis=1) * cast(s, f32), bf16)
  }
  fn to_bf16(t) = cast(t, bf16)
  fn attend(m, l, acc, qt, kt, vt) {
    let s = cast(matmul(reshape(qt, shape=[B, 1, HD]), transpose(reshape(kt, shape=[B, BK, HD]))), f32) * rsqrt(HD)
    let m2 = maximum(m, max(s, axis=2))
    let p = exp(s - m2)
    let c = exp(m - m2)
    return (m2, l * c + sum(p, axis=2), acc * c + cast(matmul(cast(p, bf16), reshape(vt, shape=[B, BK, HD])), f32))
  }
  fn finish(l, acc) = cast(reshape(acc / l, shape=[B, HD]), bf16)
  fn residual(o, r) = cast(o + cast(r, f32), bf16)
  fn swiglu(g, u) = cast(g * sigmoid(g) * u, bf16)
  xs = load(x, tile=[B, D])  # [] of bf16[B, D]: the token's activations, one tile
  x1, x2 = copy(xs)
  w1 = load(wn1, tile=[D])
  hn = map(x1, w1, fn=rms)
  hk = flatmap(hn, fn=ident, split=[B, TK])  # [D/TK] of bf16[B, TK]
  hb = bufferize(hk, rank=1)
  hq, hkk, hv = copy(hb)
  hqs = streamify(hq, repeat=H)  # [H, D/TK]: the row again for every head
  hks = streamify(hkk, repeat=H)
  hvs = streamify(hv, repeat=H)
  wqs = load(wq, tile=[TK, HD], order=[1, 0], par=4)  # [H, D/TK] of bf16[TK, HD]
  wks = load(wk, tile=[TK, HD], order=[1, 0], par=4)
  wvs = load(wv, tile=[TK, HD], order=[1, 0], par=4)
  q = accum(hqs, wqs, rank=1, init=zeros([B, HD]), fn=mac, par=16)  # [H] of f32[B, HD]
  k = accum(hks, wks, rank=1, init=zeros([B, HD]), fn=mac, par=16)
  v = accum(hvs, wvs, rank=1, init=zeros([B, HD]), fn=mac, par=16)
  cq = load(cos, tile=[1, HD], repeat=H)
  sq = load(sin, tile=[1, HD], repeat=H)
  ck = load(cos, tile=[1, HD], repeat=H)
  sk = load(sin, tile=[1, HD], repeat=H)
  qr = map(q, cq, sq, fn=rope)  # [H] of bf16[B, HD]
  kr = map(k, ck, sk, fn=rope)
  vb = map(v, fn=to_bf16)
  store(kn, kr)
  store(vn, vb)
  qrr = repeat(qr, S / BK)  # [H, S/BK]
  ks = load(kc, tile=[B, 1, BK, HD], par=8)  # [H, S/BK] of bf16[B, BK, HD]
  vs = load(vc, tile=[B, 1, BK, HD], par=8)
  _, l, acc = accum(qrr, ks, vs, rank=1, init=(full([B, 1, 1], -inf), zeros([B, 1, 1]), zeros([B, 1, HD])), fn=attend, par=16)
  ao = map(l, acc, fn=finish)  # [H] of bf16[B, HD]
  wos = load(wo, tile=[HD, D], par=4)  # [H] of bf16[HD, D]: head h's rows of wo
  o = accum(ao, wos, rank=1, init=zeros([B, D]), fn=mac, par=32)  # [] of f32[B, D]
  h = map(o, x2, fn=residual)
  h1, h2 = copy(h)
  w2 = load(wn2, tile=[D])
  hn2 = map(h1, w2, fn=rms)
  gk = flatmap(hn2, fn=ident, split=[B, TK])
  gb = bufferize(gk, rank=1)
  ga, ua = copy(gb)
  gas = streamify(ga, repeat=F / TF)  # [F/TF, D/TK]
  uas = streamify(ua, repeat=F / TF)
  wgs = load(wg, tile=[TK, TF], order=[1, 0], par=4)  # [F/TF, D/TK] of bf16[TK, TF]
  wus = load(wu, tile=[TK, TF], order=[1, 0], par=4)
  g = accum(gas, wgs, rank=1, init=zeros([B, TF]), fn=mac, par=32)  # [F/TF] of f32[B, TF]
  u = accum(uas, wus, rank=1, init=zeros([B, TF]), fn=mac, par=32)
  act = map(g, u, fn=swiglu)  # [F/TF] of bf16[B, TF]
  wds = load(wd, tile=[TF, D], par=4)  # [F/TF] of bf16[TF, D]
  dn = accum(act, wds, rank=1, init=zeros([B, D]), fn=mac, par=48)  # [] of f32[B, D]
  ys = map(dn, h2, fn=residual)
  store(y, ys)
}
