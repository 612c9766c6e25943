# Elementwise c = a + b over a vector, 4 lanes of PCUs in parallel.
kernel vector_add(a: f32[N], b: f32[N]) -> (c: f32[N]) {
  sizes N = 65536
  fn add(x, y) = x + y
  xa = load(a, tile=[1024], par=2)
  xb = load(b, tile=[1024], par=2)
  xc = map(xa, xb, fn=add, par=4)
  store(c, xc, par=2)
}
