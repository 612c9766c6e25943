# A top-1 mixture-of-experts layer with dynamic routing: each token goes to the expert its
# router scores highest (partition), only that expert's MLP runs on it, and the results
# are put back in token order (merge) and scaled by the router probability.
kernel moe_top1(x: f32[T, D], wr: f32[D, E], w1: f32[E, D, F], w2: f32[E, F, D]) -> (y: f32[T, D]) {
  sizes T = 64
  sizes D = 32
  sizes E = 4
  sizes F = 64
  fn route(t, w) {
    let logits = matmul(t, w)
    let z = exp(logits - max(logits, axis=1))
    return (argmax(logits, axis=1), max(z, axis=1) / sum(z, axis=1))
  }
  fn up(t, w) = relu(matmul(t, w))
  fn down(h, w) = matmul(h, w)
  fn scale(o, g) = o * g
  xs = load(x, tile=[1, D])  # [T] of f32[1, D]
  x_route, x_data = copy(xs)
  wrs = load(wr, tile=[D, E])
  wrr = repeat(wrs, T)
  idx, gate = map(x_route, wrr, fn=route)  # [T] of i32[1, 1], [T] of f32[1, 1]
  sel = selector(idx, n=E)
  sel_a, sel_b = copy(sel)
  parts = partition(x_data, sel_a)  # [E, ?] of f32[1, D]
  p1, p2 = copy(parts)
  w1s = load(w1, tile=[1, D, F])  # [E] of f32[D, F]
  w1e = expand(w1s, like=p2)
  h = map(p1, w1e, fn=up)
  h1, h2 = copy(h)
  w2s = load(w2, tile=[1, F, D])
  w2e = expand(w2s, like=h2)
  o = map(h1, w2e, fn=down)
  merged = merge(o, sel_b)  # [T, 1] of f32[1, D]
  flat = flatten(merged, dims=[0, 1])
  ys = map(flat, gate, fn=scale)
  store(y, ys)
}
