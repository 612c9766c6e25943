"""Tensor-parallel ASP for the blocks of a decoder layer, and the degree the cost model picks.

``mlp_source`` and ``attention_source`` write an ASP kernel that runs on ``degree`` sockets
(docs/asp.md, "More than one socket"): the MLP split Megatron-style (the up / gate projections by columns,
the down projection by rows, one ``all_reduce`` of the partial outputs) and the attention
block split by heads with grouped-query attention (each socket projects its query and
key/value heads, attends within them, and multiplies by its rows of the output projection;
one ``all_reduce``). The kernels take and return the whole tensors, so they are verified
against the same single-device reference as an unsharded kernel. ``pick_degree`` times every
valid degree with asp_lang's timing model (types only, so real model sizes cost nothing to
time) and keeps the fastest. ``mlp_stack_source`` is the pipeline-parallel option: layers split
across sockets, activations passed on with ``send`` / ``recv``. ``decoder_layer_source`` is a
whole Llama decoder layer at decode (norms, attention by heads against the KV cache, the MLP,
both all-reduces and residuals) as one kernel: what agentforge.estimate times per layer, since
a chain of a dozen small kernels per layer costs more in HBM round trips than a small model's
shard takes to stream.

Why a module of its own: the offline author (agentforge/author/) can call it to emit the
tensor-parallel form of a block when a task asks for more than one socket, without this code
living inside the author's search.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import asp_lang

DTYPES = ("f32", "bf16")
ACTIVATIONS = ("relu", "swiglu")
PREFETCHABLE = ("wo", "wg", "wu", "wd")  # decoder_layer_source's weights that may be prefetched on chip
LAYOUTS = ("in_out", "out_in")  # a weight as [in, out] (y = x @ w) or as nn.Linear keeps it, [out, in]
CACHE_LAYOUTS = ("kt", "k")  # decoder_layer_source's key cache transposed ([.., HD, CTX]) or as a model keeps it


def _tile(n: int, prefer: int) -> int:
    """The largest power of two <= ``prefer`` that divides ``n`` (1 if none larger does)."""
    t = prefer
    while t > 1 and n % t:
        t //= 2
    return max(t, 1)


def _heads_split(heads: int, kv_heads: int, degree: int, hint: str = "") -> None:
    """Attention splits by key/value head: query heads group evenly over them, and each socket
    holds whole key/value heads."""
    if heads % kv_heads:
        raise ValueError(f"heads {heads} is not a multiple of kv_heads {kv_heads}")
    if kv_heads % degree:
        raise ValueError(f"kv_heads {kv_heads} is not a multiple of the degree {degree} "
                         f"(each socket holds whole key/value heads{hint})")


def _positive(**values: int) -> None:
    for k, v in values.items():
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ValueError(f"{k} must be a positive integer, got {v!r}")


def _dtype(dtype: str) -> None:
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")


def mlp_source(tokens: int, hidden: int, intermediate: int, degree: int, dtype: str = "f32",
               activation: str = "swiglu", layout: str = "in_out", tm: int = 8, tf: int = 64,
               par: int = 8) -> str:
    """ASP for ``y = act(x @ w_up...) @ w_down`` on ``degree`` sockets (tensor parallel).

    ``activation="relu"``: ``relu(x @ w1) @ w2`` (parameters x, w1, w2). ``"swiglu"`` (Llama):
    ``(silu(x @ wg) * (x @ wu)) @ wd`` (parameters x, wg, wu, wd). ``intermediate`` must be a
    multiple of ``degree``. Partial sums are kept in f32 and all-reduced in ``dtype``.
    ``layout="out_in"`` declares the weights as ``nn.Linear`` stores them ([out, in]: the up
    projections split by rows, the down projection by columns), the order and layout
    agentforge's verifier binds a task's parameters in. ``tm`` / ``tf`` are the preferred
    token and intermediate tiles (halved until they divide), ``par`` the replicas of the
    compute operators (``pick_degree`` searches them)."""
    _positive(tokens=tokens, hidden=hidden, intermediate=intermediate, degree=degree)
    _dtype(dtype)
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
    if intermediate % degree:
        raise ValueError(f"intermediate size {intermediate} is not a multiple of the degree {degree}")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    _positive(tm=tm, tf=tf, par=par)
    tm = _tile(tokens, tm)
    tf = _tile(intermediate // degree, tf)
    dt = dtype
    t = layout == "out_in"
    upw = f"{dt}[F, D] @split(0)" if t else f"{dt}[D, F] @split(1)"   # an up / gate projection
    downw = f"{dt}[D, F] @split(1)" if t else f"{dt}[F, D] @split(0)"
    up_tile, down_tile = ("[TF, D]", "[D, TF]") if t else ("[D, TF]", "[TF, D]")
    mm = "matmul({}, transpose({}))" if t else "matmul({}, {})"
    if activation == "relu":
        params = f"x: {dt}[M, D], w1: {upw}, w2: {downw}"
        up_fn = f"  fn up(a, w) = cast(relu(cast({mm.format('a', 'w')}, f32)), {dt})\n"
        up = (f"  w1s = load(w1, tile={up_tile}, repeat=M / TM, at=0, par=4)\n"
              f"  hs = map(xs, w1s, fn=up, par={par})\n")
        down = "w2"
    else:
        params = f"x: {dt}[M, D], wg: {upw}, wu: {upw}, wd: {downw}"
        up_fn = ("  fn up(a, g, u) {\n"
                 f"    let hg = cast({mm.format('a', 'g')}, f32)\n"
                 f"    return cast(hg * sigmoid(hg) * cast({mm.format('a', 'u')}, f32), {dt})\n"
                 "  }\n")
        up = (f"  wgs = load(wg, tile={up_tile}, repeat=M / TM, at=0, par=4)\n"
              f"  wus = load(wu, tile={up_tile}, repeat=M / TM, at=0, par=4)\n"
              f"  hs = map(xs, wgs, wus, fn=up, par={par})\n")
        down = "wd"
    return (
        f"# Tensor-parallel MLP ({activation}) on P sockets: the up projection split by columns,\n"
        f"# the down projection by rows, one all_reduce of the partial outputs (agentforge/shard.py).\n"
        f"kernel mlp_tp({params}) -> (y: {dt}[M, D]) {{\n"
        f"  sockets P = {degree}\n"
        f"  sizes M = {tokens}\n  sizes D = {hidden}\n  sizes F = {intermediate}\n"
        f"  sizes TM = {tm}\n  sizes TF = {tf}\n"
        f"{up_fn}"
        f"  fn mac(acc, h, w) = acc + cast({mm.format('h', 'w')}, f32)\n"
        f"  fn out(t) = cast(t, {dt})\n"
        "  xs = load(x, tile=[TM, D], repeat=F / P / TF, at=1)\n"
        f"{up}"
        f"  ws = load({down}, tile={down_tile}, repeat=M / TM, at=0, par=4)\n"
        f"  part = accum(hs, ws, rank=1, init=zeros([TM, D]), fn=mac, par={par})\n"
        "  pc = map(part, fn=out)\n"
        "  ys = all_reduce(pc)\n"
        "  store(y, ys)\n"
        "}\n")


def attention_source(seq: int, hidden: int, heads: int, kv_heads: int, head_dim: int, degree: int,
                     dtype: str = "f32", bq: int = 16, par: int = 4, layout: str = "in_out") -> str:
    """ASP for an attention block (``softmax(q k^T / sqrt(hd)) v`` per head, grouped-query,
    then the output projection) on ``degree`` sockets, split by heads. ``heads`` must be a
    multiple of ``kv_heads`` and both of ``degree`` (a socket holds whole key/value heads).
    Parameters x [seq, hidden], wq [hidden, heads*hd], wk / wv [hidden, kv_heads*hd],
    wo [heads*hd, hidden]; the result y [seq, hidden]. Scores and softmax are f32. ``bq`` is
    the preferred query block (halved until it divides), ``par`` the compute replicas.
    ``layout="out_in"`` declares the four weights as ``nn.Linear`` keeps them (wq [heads*hd,
    hidden], ..., wo [hidden, heads*hd]), as a task's parameters bind."""
    _positive(seq=seq, hidden=hidden, heads=heads, kv_heads=kv_heads, head_dim=head_dim, degree=degree)
    _dtype(dtype)
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    _heads_split(heads, kv_heads, degree)
    _positive(bq=bq, par=par)
    bq = _tile(seq, bq)
    dt = dtype
    t = layout == "out_in"
    qkv = (lambda n: f"{dt}[{n} * HD, D] @split(0)") if t else (lambda n: f"{dt}[D, {n} * HD] @split(1)")
    wo_t = f"{dt}[D, H * HD] @split(1)" if t else f"{dt}[H * HD, D] @split(0)"
    w_tile, o_tile = ("[HD, D]", "[D, HD]") if t else ("[D, HD]", "[HD, D]")
    mm = "matmul({}, transpose({}))" if t else "matmul({}, {})"
    return (
        "# Attention block split by heads (grouped-query) on P sockets: each socket projects its\n"
        "# query and key/value heads, attends, and multiplies by its rows of wo; one all_reduce\n"
        "# (agentforge/shard.py).\n"
        f"kernel attention_tp(x: {dt}[S, D], wq: {qkv('H')}, wk: {qkv('KVH')}, "
        f"wv: {qkv('KVH')}, wo: {wo_t}) -> (y: {dt}[S, D]) {{\n"
        f"  sockets P = {degree}\n"
        f"  sizes S = {seq}\n  sizes D = {hidden}\n  sizes H = {heads}\n  sizes KVH = {kv_heads}\n"
        f"  sizes HD = {head_dim}\n  sizes BQ = {bq}\n"
        f"  fn proj(a, w) = {mm.format('a', 'w')}\n"
        "  fn attend(q, k, v) {\n"
        "    let s = cast(matmul(q, transpose(k)), f32) * rsqrt(HD)\n"
        "    let p = exp(s - max(s, axis=1))\n"
        f"    return matmul(cast(p / sum(p, axis=1), {dt}), v)\n"
        "  }\n"
        f"  fn mac(acc, o, w) = acc + cast({mm.format('o', 'w')}, f32)\n"
        f"  fn out(t) = cast(t, {dt})\n"
        "  xq = load(x, tile=[BQ, D], repeat=H / P, at=1)\n"
        f"  qw = load(wq, tile={w_tile}, repeat=S / BQ, at=0)\n"
        f"  qs = map(xq, qw, fn=proj, par={par})\n"
        "  xk = load(x, tile=[S, D], repeat=KVH / P)\n"
        f"  kw = load(wk, tile={w_tile})\n"
        f"  ks = map(xk, kw, fn=proj, par={par})\n"
        "  xv = load(x, tile=[S, D], repeat=KVH / P)\n"
        f"  vw = load(wv, tile={w_tile})\n"
        f"  vs = map(xv, vw, fn=proj, par={par})\n"
        "  kq = repeat(ks, H / KVH)\n"
        "  vq = repeat(vs, H / KVH)\n"
        "  kg = flatten(kq, dims=[0, 1])\n"
        "  vg = flatten(vq, dims=[0, 1])\n"
        "  kb = bufferize(kg, rank=1)\n"
        "  vb = bufferize(vg, rank=1)\n"
        "  kr = streamify(kb, repeat=S / BQ)\n"
        "  vr = streamify(vb, repeat=S / BQ)\n"
        f"  os = map(qs, kr, vr, fn=attend, par={par})\n"
        f"  ow = load(wo, tile={o_tile}, repeat=S / BQ, at=0)\n"
        f"  part = accum(os, ow, rank=1, init=zeros([BQ, D]), fn=mac, par={par})\n"
        "  pc = map(part, fn=out)\n"
        "  ys = all_reduce(pc)\n"
        "  store(y, ys)\n"
        "}\n")


def mlp_stack_source(layers: int, tokens: int, hidden: int, intermediate: int, stages: int,
                     dtype: str = "f32", tm: int = 8, tf: int = 64, par: int = 8) -> str:
    """ASP for ``layers`` relu MLPs in a row (``x <- relu(x @ w1_l) @ w2_l``) on ``stages``
    sockets, pipeline-parallel: socket ``s`` holds layers ``[s L/S, (s+1) L/S)`` whole and
    passes the activations to socket ``s+1`` with ``send`` / ``recv``, tile by tile, so the
    stages overlap on a stream of several row blocks (at decode, one block, they run one after
    another). Parameters ``x, w1_0, w2_0, w1_1, ...`` ([in, out] layout); the result ``y``."""
    _positive(layers=layers, tokens=tokens, hidden=hidden, intermediate=intermediate, stages=stages, tm=tm,
              tf=tf, par=par)
    _dtype(dtype)
    if layers % stages:
        raise ValueError(f"layers {layers} is not a multiple of the stages {stages}")
    tm = _tile(tokens, tm)
    tf = _tile(intermediate, tf)
    dt = dtype
    per = layers // stages
    params = [f"x: {dt}[M, D]"] + [f"w1_{i}: {dt}[D, F], w2_{i}: {dt}[F, D]" for i in range(layers)]
    body = ["  a0 = load(x, tile=[TM, D], on=[0])  # [M/TM] of the first stage's input rows"]
    cur = "a0"
    for i in range(layers):
        st = i // per
        on = f"on=[{st}]"
        if i and i % per == 0:  # a stage boundary: the activations go to the next socket
            body.append(f"  send({cur}, to={st}, on=[{st - 1}])")
            body.append(f"  r{i} = recv(from={st - 1}, {on})")
            cur = f"r{i}"
        body += [f"  x{i} = repeat({cur}, F / TF, {on})  # layer {i} on socket {st}",
                 f"  u{i} = load(w1_{i}, tile=[D, TF], repeat=M / TM, at=0, par=4, {on})",
                 f"  h{i} = map(x{i}, u{i}, fn=up, par={par}, {on})",
                 f"  d{i} = load(w2_{i}, tile=[TF, D], repeat=M / TM, at=0, par=4, {on})",
                 f"  a{i + 1} = accum(h{i}, d{i}, rank=1, init=zeros([TM, D]), fn=mac, par={par}, {on})",
                 f"  c{i + 1} = map(a{i + 1}, fn=out, {on})"]
        cur = f"c{i + 1}"
    body.append(f"  store(y, {cur}, on=[{stages - 1}])")
    return (
        f"# {layers} MLP layers pipeline-parallel over P sockets, {per} per socket (agentforge/shard.py).\n"
        f"kernel mlp_pp({', '.join(params)}) -> (y: {dt}[M, D]) {{\n"
        f"  sockets P = {stages}\n"
        f"  sizes M = {tokens}\n  sizes D = {hidden}\n  sizes F = {intermediate}\n"
        f"  sizes TM = {tm}\n  sizes TF = {tf}\n"
        f"  fn up(a, w) = cast(relu(cast(matmul(a, w), f32)), {dt})\n"
        "  fn mac(acc, h, w) = acc + cast(matmul(h, w), f32)\n"
        f"  fn out(t) = cast(t, {dt})\n"
        + "\n".join(body) + "\n}\n")


def decoder_layer_source(tokens: int, hidden: int, heads: int, kv_heads: int, head_dim: int, intermediate: int,
                         context: int, degree: int, dtype: str = "bf16", tk: int = 256, to: int = 32,
                         tf: int = 128, td: int = 16, tc: int = 256, par: int = 64, load_par: int = 5,
                         prefetch: tuple[str, ...] = (), buffer_par: int = 64, layout: str = "in_out",
                         cache: str = "kt", batch: int = 1, attend_new: bool = False, eps: float = 1e-5,
                         rope_rows: int | None = None, fixed_par: bool = False) -> str:
    """ASP for one whole Llama decoder layer at decode, tensor-parallel on ``degree`` sockets, as
    ONE kernel: RMSNorm, the q/k/v projections (heads split by columns), RoPE, grouped-query
    attention of the new rows against the KV cache (online softmax over cache blocks, the cache
    read once per KV head), the output projection (rows split), one ``all_reduce``, the residual
    add, RMSNorm, the SwiGLU MLP (gate/up by columns, down by rows), a second ``all_reduce`` and
    the second residual add. The new rows' rotated keys and values are results (``kn``, ``vn``:
    what a server appends to the cache). The new rows attend to the cache given (``kc`` kept
    transposed, ``[KVH, HD, CTX]``; ``vc`` ``[KVH, CTX, HD]``), not to themselves, like the
    estimate's shard module.

    Why one kernel: at decode a socket's share of a layer is a few MB of weights, streamed in a
    few microseconds, and every kernel boundary costs an HBM write and read latency (~0.8 us
    on sn40l) plus, between layers of different kernels, a reconfiguration. Inside one kernel
    activations stay on chip; the weights of every projection stream from HBM in parallel
    loads, and what remains is the chain of data dependencies (each projection's reduction
    waits for its input) and the two all-reduces.

    Weights are ``[in, out]`` (``y = x @ w``). Parameters: x, g1 (attention norm), wq, wk, wv,
    cos, sin ``[tokens, head_dim]``, kc, vc, wo, g2 (MLP norm), wg, wu, wd. ``heads`` and
    ``kv_heads`` count the group's heads: both multiples of ``degree`` (a model whose KV heads
    are fewer than the sockets is generated with one replicated KV head per socket:
    ``kv_heads = degree``, which gives each socket exactly its shard's shapes). Tiles: ``tk``
    the hidden-dimension slice of a projection step, ``to`` the rows of an output-projection
    step (divides head_dim), ``tf`` the intermediate columns of a gate/up result, ``td`` the
    rows of a down-projection step (divides tf), ``tc`` the cache block; each is halved until it
    divides. ``par`` caps the replicas of each reduction, ``load_par`` the AGCUs of each weight
    load. ``prefetch`` names weights (of ``PREFETCHABLE``: wo, wg, wu, wd) that go through one
    on-chip buffer each (``bufferize`` of the socket's whole shard, read back by ``streamify``):
    their loads then stream from HBM from the kernel's start, beside the q/k/v loads, instead of
    waiting behind full FIFOs until their consumer's input exists (the MLP's weights wait for the
    attention half and its all-reduce). It costs twice each shard's bytes of SRAM; where that does
    not fit, the kernel is cut into sections (slower, so the estimate does not pick it) or is a
    ``ResourceError``. ``buffer_par`` banks each such buffer over at least that many PMUs, so that
    reading it back (at one PMU's port bandwidth per bank) keeps pace with its consumer.

    The forms a PyTorch layer is written in (what the offline author's decoder template binds a
    task's tensors to, agentforge/author/templates/decoder.py): ``dtype`` "f32" computes and keeps
    everything in f32; ``layout="out_in"`` declares the seven weights as ``nn.Linear`` keeps them
    (``[out, in]``, read transposed in place); ``cache="k"`` takes the key cache untransposed
    (``[KVH, CTX, HD]``, as a model keeps it); ``batch`` > 1 is that many sequences of one new row
    each (``tokens == batch``), each with its own cache (``kc`` ``[B, KVH, ...]``, ``vc`` ``[B, KVH,
    CTX, HD]``); ``attend_new`` lets each new row attend to its own key and value too (an
    online-softmax merge after the cache, one new row per sequence); ``eps`` is the norms';
    ``rope_rows`` 1 takes one cos/sin row for every new row (one position, broadcast);
    ``fixed_par`` gives every reduction ``par`` replicas at any sizes (not fewer where it has fewer
    steps), so the kernel at a task's check sizes is the configuration timed at its own."""
    _positive(tokens=tokens, hidden=hidden, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
              intermediate=intermediate, context=context, degree=degree, tk=tk, to=to, tf=tf, td=td, tc=tc,
              par=par, load_par=load_par, buffer_par=buffer_par, batch=batch)
    _dtype(dtype)
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if cache not in CACHE_LAYOUTS:
        raise ValueError(f"cache must be one of {', '.join(CACHE_LAYOUTS)}, got {cache!r}")
    if batch > 1 and tokens != batch:
        raise ValueError(f"batch {batch} sequences take one new row each: tokens must be {batch}, got {tokens}")
    if attend_new and tokens != batch:
        raise ValueError(f"attend_new merges one new row per sequence: tokens ({tokens}) must equal batch ({batch})")
    rope_rows = tokens if rope_rows is None else rope_rows
    if rope_rows not in (1, tokens):
        raise ValueError(f"rope_rows must be 1 (one position for every row) or tokens ({tokens}), got {rope_rows}")
    if not 0 < eps < 1:
        raise ValueError(f"eps must be in (0, 1), got {eps!r}")
    _heads_split(heads, kv_heads, degree, "; replicate them: kv_heads = degree")
    if intermediate % degree:
        raise ValueError(f"intermediate size {intermediate} is not a multiple of the degree {degree}")
    if head_dim % 2:
        raise ValueError(f"head_dim {head_dim} must be even (rotary embeddings rotate halves)")
    hl, kvl, fl = heads // degree, kv_heads // degree, intermediate // degree
    tk, to, tc = _tile(hidden, tk), _tile(head_dim, to), _tile(context, tc)
    tf = _tile(fl, tf)
    td = _tile(tf, td)

    def rp(n: int) -> int:  # replicas of a reduction over n elements
        return par if fixed_par else max(1, min(par, n))
    pq, pkv = rp(hl * hidden // tk), rp(kvl * hidden // tk)
    pat, po = rp(batch * kvl * context // tc), rp(hl * head_dim // to)
    pup, pdn = rp(fl // tf * hidden // tk), rp(fl // td)
    lp = load_par
    bad = [w for w in prefetch if w not in PREFETCHABLE]
    if bad:
        raise ValueError(f"prefetch names weights of {', '.join(PREFETCHABLE)}, got {', '.join(map(str, bad))}")
    dt = dtype
    t = layout == "out_in"
    # a weight's declaration, the tile of one reduction step, the stream order, and how a step multiplies
    mm = "matmul({}, transpose({}))" if t else "matmul({}, {})"
    w_in = (lambda n, s: f"{dt}[{n}, {s}] @split(0)") if t else (lambda n, s: f"{dt}[{s}, {n}] @split(1)")
    w_out = (lambda n, s: f"{dt}[{s}, {n}] @split(1)") if t else (lambda n, s: f"{dt}[{n}, {s}] @split(0)")
    proj_tile, proj_order = ("[HD, TK]", "") if t else ("[TK, HD]", ", order=[1, 0]")
    o_tile, up_tile, d_tile = ("[D, TO]", "[TF, TK]", "[D, TD]") if t else ("[TO, D]", "[TK, TF]", "[TD, D]")
    up_order = "" if t else ", order=[1, 0]"
    # the caches: one per sequence with batch > 1 (a leading batch axis); K transposed or not
    lead, lead1, bsplit = ("B, ", "1, ", 1) if batch > 1 else ("", "", 0)
    kc_shape = f"{lead}KVH, HD, CTX" if cache == "kt" else f"{lead}KVH, CTX, HD"
    kc_tile = f"[{lead1}1, HD, TC]" if cache == "kt" else f"[{lead1}1, TC, HD]"
    cache_order = ", order=[1, 0, 2]" if batch > 1 else ""   # KV head outer, sequence inner
    score = "matmul(q, k)" if cache == "kt" else "matmul(q, transpose(k))"
    rope_decl = "M" if rope_rows == tokens else "1"

    def wload(w: str, tile: str, rank: int, extra: str = "") -> str:
        """``{w}s``: the stream of weight ``w``'s tiles, straight from HBM or through a buffer."""
        if w not in prefetch:
            return f"  {w}s = load({w}, tile={tile}{extra}, par={lp})\n"
        return (f"  {w}l = load({w}, tile={tile}{extra}, par={lp})\n"
                f"  {w}b = bufferize({w}l, rank={rank}, par={buffer_par})  # prefetched: the whole shard on chip\n"
                f"  {w}s = streamify({w}b, par={buffer_par})\n")

    new_fns = ""
    if batch > 1:   # sequence b's rows: its query rows of a KV head's group, its new key / value row
        new_fns += ("  fn pick(t) = take(t, iota([H / KVH, HD], axis=0) * M + pos(1), axis=0)\n"
                    "  fn row(t) = take(t, iota([1, HD], axis=0) + pos(1), axis=0)\n"
                    "  fn unstack(acc, t) = put(acc, iota([H / KVH, HD], axis=0) * M + pos(1), t, axis=0)\n")
    if attend_new:
        new_fns += ("  fn merge(mx, sm, o, q, k, v) {\n"
                    "    let s = cast(matmul(q, transpose(k)), f32)\n"
                    "    let m2 = maximum(mx, s)\n"
                    "    let a = exp(mx - m2)\n"
                    "    let p = exp(s - m2)\n"
                    f"    return cast((o * a + p * cast(v, f32)) / (sm * a + p), {dt})\n"
                    "  }\n")
    g_rows = "H / KVH" if batch > 1 else "H / KVH * M"   # the query rows one cache block meets
    ginit = f"init=(full([{g_rows}, 1], -inf), zeros([{g_rows}, 1]), zeros([{g_rows}, HD]))"
    # grouped-query attention: the queries of one KV head (and sequence) against its cache blocks
    if batch > 1:
        att = ("  qb = repeat(qg, B)  # [KVH/P, B]\n"
               "  qs = map(qb, fn=pick)  # [KVH/P, B] of [G, HD]: sequence b's query rows\n")
        qsrc, qdims = "qs", "[KVH/P, B, CTX/TC]"
    else:
        att, qsrc, qdims = "", "qg", "[KVH/P, CTX/TC]"
    if attend_new:
        att += f"  {qsrc}a, {qsrc}m = copy({qsrc})\n"
        qsrc_c, qsrc_m = f"{qsrc}a", f"{qsrc}m"
    else:
        qsrc_c = qsrc
    att += (f"  qc = repeat({qsrc_c}, CTX / TC)  # {qdims}\n"
            f"  kcs = load(kc, tile={kc_tile}{cache_order}, par={lp})  # {qdims}\n"
            f"  vcs = load(vc, tile=[{lead1}1, TC, HD]{cache_order}, par={lp})  # {qdims} of [TC, HD]\n"
            f"  {'mx' if attend_new else '_'}, sm, oa = accum(qc, kcs, vcs, rank=1, {ginit}, fn=online, par={pat})\n")
    a0 = "att0" if batch > 1 else "att"
    if attend_new:
        kq, vq = "krm", "vbm"
        if batch > 1:
            att += ("  kb = repeat(krm, B)\n  kq = map(kb, fn=row)  # [KVH/P, B] of [1, HD]: sequence b's new key\n"
                    "  vbb = repeat(vbm, B)\n  vq = map(vbb, fn=row)\n")
            kq, vq = "kq", "vq"
        att += f"  {a0} = map(mx, sm, oa, {qsrc_m}, {kq}, {vq}, fn=merge)  # the new rows' own keys merged in\n"
    else:
        att += f"  {a0} = map(sm, oa, fn=fin)  # [KVH/P] of {dt}[G*M, HD]\n"
    if batch > 1:   # back to [KVH/P] of [G*M, HD], the rows the output projection takes
        att += f"  att = accum(att0, rank=1, init=zeros([H / KVH * M, HD], dtype={dt}), fn=unstack)\n"
    kv_out = ("  krs, krm = copy(kr)\n  store(kn, krs)  # the new rows' keys, for the cache\n"
              "  vb = map(v, fn=tobf)\n  vbs, vbm = copy(vb)\n  store(vn, vbs)\n") if attend_new else (
              "  store(kn, kr)  # the new rows' keys, for the cache\n  vb = map(v, fn=tobf)\n  store(vn, vb)\n")
    return (
        "# One Llama decoder layer at decode on P sockets, tensor-parallel, as one kernel\n"
        "# (agentforge/shard.py decoder_layer_source): norm, q/k/v by heads, RoPE, GQA against the\n"
        "# KV cache, o projection by rows, all_reduce, residual; norm, SwiGLU by columns/rows,\n"
        "# all_reduce, residual.\n"
        f"kernel decoder_layer(x: {dt}[M, D], g1: {dt}[D], wq: {w_in('H * HD', 'D')}, "
        f"wk: {w_in('KVH * HD', 'D')}, wv: {w_in('KVH * HD', 'D')}, cos: {dt}[{rope_decl}, HD], "
        f"sin: {dt}[{rope_decl}, HD], kc: {dt}[{kc_shape}] @split({bsplit}), vc: {dt}[{lead}KVH, CTX, HD] "
        f"@split({bsplit}), wo: {w_out('H * HD', 'D')}, g2: {dt}[D], wg: {w_in('F', 'D')}, wu: {w_in('F', 'D')}, "
        f"wd: {w_out('F', 'D')}) "
        f"-> (y: {dt}[M, D], kn: {dt}[M, KVH * HD] @split(1), vn: {dt}[M, KVH * HD] @split(1)) {{\n"
        f"  sockets P = {degree}\n"
        f"  sizes M = {tokens}\n  sizes D = {hidden}\n  sizes H = {heads}\n  sizes KVH = {kv_heads}\n"
        f"  sizes HD = {head_dim}\n  sizes F = {intermediate}\n  sizes CTX = {context}\n"
        + (f"  sizes B = {batch}\n" if batch > 1 else "") +
        f"  sizes TK = {tk}\n  sizes TO = {to}\n  sizes TF = {tf}\n  sizes TD = {td}\n  sizes TC = {tc}\n"
        "  fn rms(t, g) {\n"
        "    let u = cast(t, f32)\n"
        f"    return cast(u * rsqrt(mean(u * u, axis=1) + {eps!r}) * cast(g, f32), {dt})\n"
        "  }\n"
        f"  fn pmac(acc, h, w) = acc + cast({mm.format('take(h, iota([M, TK], axis=1) + pos(1) * TK, axis=1)', 'w')}"
        ", f32)\n"
        "  fn rope(t, c, s) {\n"
        "    let lo = slice(t, axis=1, start=0, stop=HD / 2)\n"
        "    let hi = slice(t, axis=1, start=HD / 2)\n"
        f"    return cast(t * cast(c, f32) + concat(-hi, lo, axis=1) * cast(s, f32), {dt})\n"
        "  }\n"
        "  fn ropeq(t, c, s) {\n"
        "    let lo = slice(t, axis=1, start=0, stop=HD / 2)\n"
        "    let hi = slice(t, axis=1, start=HD / 2)\n"
        f"    return cast((t * cast(c, f32) + concat(-hi, lo, axis=1) * cast(s, f32)) * rsqrt(HD), {dt})\n"
        "  }\n"
        "  fn stack(acc, t) = put(acc, iota([M, HD], axis=0) + pos(1) * M, t, axis=0)\n"
        "  fn online(mx, sm, o, q, k, v) {\n"
        f"    let s = cast({score}, f32)\n"
        "    let m2 = maximum(mx, max(s, axis=1))\n"
        "    let p = exp(s - m2)\n"
        "    let a = exp(mx - m2)\n"
        f"    return (m2, sm * a + sum(p, axis=1), o * a + cast(matmul(cast(p, {dt}), v), f32))\n"
        "  }\n"
        f"  fn fin(sm, o) = cast(o / sm, {dt})\n"
        + new_fns +
        "  fn omac(acc, a, w) {\n"
        "    let r = take(a, iota([M, HD], axis=0) + pos(1) * M, axis=0)\n"
        f"    return acc + cast({mm.format('take(r, iota([M, TO], axis=1) + pos(2) * TO, axis=1)', 'w')}, f32)\n"
        "  }\n"
        "  fn upmac(ag, au, h, g, u) {\n"
        "    let hh = take(h, iota([M, TK], axis=1) + pos(1) * TK, axis=1)\n"
        f"    return (ag + cast({mm.format('hh', 'g')}, f32), au + cast({mm.format('hh', 'u')}, f32))\n"
        "  }\n"
        f"  fn act(a, b) = cast(a * sigmoid(a) * b, {dt})\n"
        f"  fn dmac(acc, a, w) = acc + cast({mm.format('take(a, iota([M, TD], axis=1) + pos(1) * TD, axis=1)', 'w')}"
        ", f32)\n"
        f"  fn tobf(t) = cast(t, {dt})\n"
        f"  fn add(a, b) = cast(cast(a, f32) + cast(b, f32), {dt})\n"
        "  # attention: norm, projections (this socket's heads), RoPE\n"
        f"  xs = load(x, tile=[M, D])  # [] of {dt}[M, D]: the hidden state, whole on every socket\n"
        "  x1, x2 = copy(xs)\n"
        "  g1s = load(g1, tile=[D])\n"
        "  h = map(x1, g1s, fn=rms)\n"
        "  hq0, hk0, hv0 = copy(h)\n"
        "  hq1 = repeat(hq0, H / P)\n"
        "  hq = repeat(hq1, D / TK)  # [H/P, D/TK]\n"
        f"  wqs = load(wq, tile={proj_tile}{proj_order}, par={lp})  # [H/P, D/TK] of one head's slice\n"
        f"  q = accum(hq, wqs, rank=1, init=zeros([M, HD]), fn=pmac, par={pq})  # [H/P] of f32[M, HD]\n"
        "  hk1 = repeat(hk0, KVH / P)\n"
        "  hk = repeat(hk1, D / TK)\n"
        f"  wks = load(wk, tile={proj_tile}{proj_order}, par={lp})\n"
        f"  k = accum(hk, wks, rank=1, init=zeros([M, HD]), fn=pmac, par={pkv})  # [KVH/P] of f32[M, HD]\n"
        "  hv1 = repeat(hv0, KVH / P)\n"
        "  hv = repeat(hv1, D / TK)\n"
        f"  wvs = load(wv, tile={proj_tile}{proj_order}, par={lp})\n"
        f"  v = accum(hv, wvs, rank=1, init=zeros([M, HD]), fn=pmac, par={pkv})\n"
        f"  cs = load(cos, tile=[{rope_decl}, HD])\n"
        f"  ss = load(sin, tile=[{rope_decl}, HD])\n"
        "  cq0, ck0 = copy(cs)\n"
        "  sq0, sk0 = copy(ss)\n"
        "  cq = repeat(cq0, H / P)\n"
        "  sq = repeat(sq0, H / P)\n"
        "  ck = repeat(ck0, KVH / P)\n"
        "  sk = repeat(sk0, KVH / P)\n"
        f"  qr = map(q, cq, sq, fn=ropeq)  # [H/P] of {dt}[M, HD], scaled by 1/sqrt(HD)\n"
        "  kr = map(k, ck, sk, fn=rope)\n"
        + kv_out +
        "  # grouped-query attention against the cache, read once per KV head\n"
        "  qh = reshape(qr, dim=0, chunk=H / KVH)  # [KVH/P, H/KVH]\n"
        f"  qg = accum(qh, rank=1, init=zeros([H / KVH * M, HD], dtype={dt}), fn=stack)  # [KVH/P] of {dt}[G*M, HD]\n"
        + att +
        "  # output projection (this socket's rows of wo), all-reduce, residual\n"
        "  a1 = repeat(att, H / KVH)\n"
        "  a2 = repeat(a1, HD / TO)  # [KVH/P, H/KVH, HD/TO]\n"
        + wload("wo", o_tile, 1) +   # [H/P*HD/TO] of one step's rows of wo
        "  wo1 = reshape(wos, dim=0, chunk=H / KVH * HD / TO)\n"
        "  wo2 = reshape(wo1, dim=1, chunk=HD / TO)  # [KVH/P, H/KVH, HD/TO]\n"
        f"  op = accum(a2, wo2, rank=3, init=zeros([M, D]), fn=omac, par={po})  # [] of f32[M, D]: a partial sum\n"
        "  ob = map(op, fn=tobf)\n"
        "  oar = all_reduce(ob)\n"
        "  r1 = map(x2, oar, fn=add)\n"
        "  r1a, r1b = copy(r1)\n"
        "  # MLP: norm, gate/up (this socket's columns), SwiGLU, down (its rows), all-reduce, residual\n"
        "  g2s = load(g2, tile=[D])\n"
        "  h2 = map(r1a, g2s, fn=rms)\n"
        "  hu1 = repeat(h2, F / P / TF)\n"
        "  hu = repeat(hu1, D / TK)  # [F/P/TF, D/TK]\n"
        + wload("wg", up_tile, 2, up_order) + wload("wu", up_tile, 2, up_order) +
        f"  ag, au = accum(hu, wgs, wus, rank=1, init=(zeros([M, TF]), zeros([M, TF])), fn=upmac, par={pup})\n"
        f"  am = map(ag, au, fn=act)  # [F/P/TF] of {dt}[M, TF]\n"
        "  ad = repeat(am, TF / TD)  # [F/P/TF, TF/TD]\n"
        + wload("wd", d_tile, 1) +   # [F/P/TD] of one step's rows of wd
        "  wd2 = reshape(wds, dim=0, chunk=TF / TD)\n"
        f"  dp = accum(ad, wd2, rank=2, init=zeros([M, D]), fn=dmac, par={pdn})  # [] of f32[M, D]\n"
        "  db = map(dp, fn=tobf)\n"
        "  dar = all_reduce(db)\n"
        "  ys = map(r1b, dar, fn=add)\n"
        "  store(y, ys)\n"
        "}\n")


@dataclass
class ShardChoice:
    """The degree the cost model picked, with every candidate degree's best time (degrees not
    valid for these sizes are in ``skipped``, with the reason), the tiles and replicas that
    gave it (``configs``) and the chosen kernel's source."""
    degree: int
    seconds: dict[int, float]
    source: str
    skipped: dict[int, str] = field(default_factory=dict)
    configs: dict[int, dict] = field(default_factory=dict)


# tiles and replicas tried at every degree: decode wants small token tiles (one weight pass),
# prefill large ones and many replicas (compute-bound)
MLP_GRID = tuple({"tm": tm, "tf": tf, "par": par} for tm in (8, 64, 128) for tf in (64, 256) for par in (8, 64, 256))
ATTENTION_GRID = tuple({"bq": bq, "par": par} for bq in (16, 64) for par in (4, 32, 128))


def pick_degree(block: str, sizes: dict[str, int], degrees=(1, 2, 4, 8), machine: str = "sn40l",
                node=None, model: str = "fast", dtype: str = "f32", activation: str = "swiglu",
                layout: str = "in_out") -> ShardChoice:
    """Time ``block`` ("mlp": tokens, hidden, intermediate; "attention": seq, hidden, heads,
    kv_heads, head_dim) at every degree the sizes allow, each with the best of a small grid of
    tiles and replicas (``MLP_GRID``, ``ATTENTION_GRID``), and return the fastest degree (ties:
    the smaller, which uses fewer sockets). ``node`` gives the peer links (asp_lang.node;
    default those of sn40l-node8); ``model`` is asp_lang's "fast" or "event" timing model; ``layout``
    the weights' layout (``LAYOUTS``), ``activation`` the MLP's."""
    if block not in ("mlp", "attention"):
        raise ValueError(f"block must be 'mlp' or 'attention', got {block!r}")
    if model not in ("fast", "event"):
        raise ValueError(f"model must be 'fast' or 'event', got {model!r}")
    need = ("tokens", "hidden", "intermediate") if block == "mlp" else ("seq", "hidden", "heads", "kv_heads",
                                                                        "head_dim")
    missing = [k for k in need if k not in sizes]
    unknown = [k for k in sizes if k not in need]
    if missing or unknown:
        raise ValueError(f"{block} sizes need exactly {', '.join(need)}"
                         + (f"; missing {', '.join(missing)}" if missing else "")
                         + (f"; unknown {', '.join(unknown)}" if unknown else ""))
    seconds: dict[int, float] = {}
    sources: dict[int, str] = {}
    configs: dict[int, dict] = {}
    skipped: dict[int, str] = {}
    for p in degrees:
        seen: set[str] = set()
        for cfg in (MLP_GRID if block == "mlp" else ATTENTION_GRID):
            try:
                src = (mlp_source(degree=p, dtype=dtype, activation=activation, layout=layout, **cfg, **sizes)
                       if block == "mlp" else attention_source(degree=p, dtype=dtype, layout=layout, **cfg, **sizes))
                if src in seen:
                    continue
                seen.add(src)
                prog = asp_lang.compile(src, machine=machine, node=node, filename=f"{block}_tp{p}.asp")
                rep = asp_lang.profile(prog) if model == "fast" else asp_lang.simulate(prog)
            except ValueError as e:  # the degree does not fit the sizes: no tiles will help
                skipped[p] = str(e)
                break
            except asp_lang.AspError as e:  # these tiles do not fit (the chip, the sizes): try others
                skipped.setdefault(p, e.short())
                continue
            if p not in seconds or rep.seconds < seconds[p]:
                seconds[p], sources[p], configs[p] = rep.seconds, src, dict(cfg)
        if p in seconds:
            skipped.pop(p, None)
    if not seconds:
        raise ValueError(f"no degree in {list(degrees)} is valid for these sizes: {skipped}")
    best = min(seconds, key=lambda p: (seconds[p], p))
    return ShardChoice(best, seconds, sources[best], skipped, configs)


# ------------------------------------------------------------------ a task's graph as a shardable block

_TORCH_DTYPE = {"f32": "float32", "bf16": "bfloat16"}


@dataclass(frozen=True)
class Block:
    """A task's graph recognised as a block this module shards: what ``pick_degree`` needs."""
    block: str                  # "mlp" | "attention"
    sizes: dict[str, int]
    dtype: str
    activation: str
    layout: str

    def describe(self) -> str:
        s = ", ".join(f"{k} {v}" for k, v in self.sizes.items())
        what = f"{self.activation} MLP" if self.block == "mlp" else "grouped-query attention block"
        return f"{what} ({s}; {self.dtype}, weights {self.layout})"


def _mlp_reference(activation: str, layout: str, m: int, d: int, f: int, dtype: str, swap: bool = False):
    """The PyTorch form of the MLP ``mlp_source`` writes, on the meta device, and its input
    (``swap``: SwiGLU written ``up(x) * silu(gate(x))``, which captures in another node order and
    operand order than ``silu(gate(x)) * up(x)``; the canonical form keeps them apart)."""
    import torch

    dt = getattr(torch, _TORCH_DTYPE[dtype])
    names = ("w1", "w2") if activation == "relu" else ("wg", "wu", "wd")
    up, down = ((f, d), (d, f)) if layout == "out_in" else ((d, f), (f, d))

    class Mlp(torch.nn.Module):
        def __init__(self):
            super().__init__()
            for n in names:
                shape = down if n in ("w2", "wd") else up
                self.register_parameter(n, torch.nn.Parameter(torch.empty(shape, dtype=dt)))

        def proj(self, a, w):
            return a @ (w.t() if layout == "out_in" else w)

        def forward(self, x):
            if activation == "relu":
                return self.proj(torch.relu(self.proj(x, self.w1)), self.w2)
            if swap:
                u = self.proj(x, self.wu)
                return self.proj(u * torch.nn.functional.silu(self.proj(x, self.wg)), self.wd)
            return self.proj(torch.nn.functional.silu(self.proj(x, self.wg)) * self.proj(x, self.wu), self.wd)

    with torch.device("meta"):
        return Mlp(), torch.empty((m, d), dtype=dt)


def _attention_reference(layout: str, s: int, d: int, h: int, kvh: int, hd: int, dtype: str):
    """The PyTorch form of the block ``attention_source`` writes (q/k/v projections viewed as
    heads, key/value heads repeated for their query-head group, softmax(q k^T / sqrt(hd)) v, the
    output projection), on the meta device, and its input."""
    import torch

    dt = getattr(torch, _TORCH_DTYPE[dtype])
    shapes = {"wq": (h * hd, d), "wk": (kvh * hd, d), "wv": (kvh * hd, d), "wo": (d, h * hd)}

    class Attention(torch.nn.Module):
        def __init__(self):
            super().__init__()
            for n, shape in shapes.items():
                shape = shape if layout == "out_in" else shape[::-1]
                self.register_parameter(n, torch.nn.Parameter(torch.empty(shape, dtype=dt)))

        def proj(self, a, w):
            return a @ (w.t() if layout == "out_in" else w)

        def forward(self, x):
            q = self.proj(x, self.wq).view(s, h, hd).transpose(0, 1)
            k = self.proj(x, self.wk).view(s, kvh, hd).transpose(0, 1).repeat_interleave(h // kvh, dim=0)
            v = self.proj(x, self.wv).view(s, kvh, hd).transpose(0, 1).repeat_interleave(h // kvh, dim=0)
            p = torch.softmax(q @ k.transpose(-2, -1) * hd ** -0.5, dim=-1)
            return self.proj((p @ v).transpose(0, 1).reshape(s, h * hd), self.wo)

    with torch.device("meta"):
        return Attention(), torch.empty((s, d), dtype=dt)


def _attention_candidates(graph, s: int, d: int, params) -> list[tuple[str, int, int, int]]:
    """(layout, heads, kv_heads, head_dim) the four weights' shapes allow, head_dim read from the
    graph's [seq, heads, head_dim] views (the heads a task splits its projections into)."""
    if len(params) != 4 or any(len(p.shape) != 2 for p in params):
        return []
    wq, wk, wv, wo = (tuple(p.shape) for p in params)
    views = {n.out.shape[2] for n in graph.nodes
             if not isinstance(n.out, tuple) and len(n.out.shape) == 3 and n.out.shape[0] == s}
    out = []
    for layout in LAYOUTS:
        fix = (lambda t: t) if layout == "out_in" else (lambda t: t[::-1])
        wq_, wk_, wv_, wo_ = fix(wq), fix(wk), fix(wv), fix(wo)
        if wq_[1] != d or wk_[1] != d or wk_ != wv_ or wo_ != (d, wq_[0]):
            continue
        for hd in sorted(views):
            if hd and wq_[0] % hd == 0 and wk_[0] % hd == 0 and (wq_[0] // hd) % (wk_[0] // hd) == 0:
                out.append((layout, wq_[0] // hd, wk_[0] // hd, hd))
    return out


def match_block(graph) -> Block | str:
    """The shardable block ``graph`` (a task's captured ``AtenGraph``) is, or why it is none.

    Matched by structure, never by name: the operands' shapes propose a block (one [M, D] input
    and two MLP weights, relu, or three, SwiGLU; or wq, wk, wv, wo of a grouped-query attention
    block, its head size read from the graph's [seq, heads, head_dim] views; weights as
    ``nn.Linear`` keeps them or as [in, out]), and the task's graph must have the same canonical
    form (agentforge.canonical: operand order of commutative ops and row views do not matter) as
    that block written in PyTorch at the task's sizes. What else computes the same thing
    differently is not recognised (the verifier would still judge a kernel for it; the author
    just does not offer one)."""
    import torch

    from .canonical import canonical_key
    from .capture import export_guard, graph_from_export

    ins, params = list(graph.inputs), list(graph.params)
    if len(ins) != 1 or len(ins[0].shape) != 2 or len(graph.outputs) != 1:
        return ("not a shardable block: the tensor-parallel blocks take one 2-D input and give one output "
                f"(this graph takes {len(ins)} input(s) {[list(s.shape) for s in ins]} and gives "
                f"{len(graph.outputs)} output(s))")
    dtype = ins[0].dtype
    if dtype not in _TORCH_DTYPE or any(p.dtype != dtype for p in params):
        return f"not a shardable block: the tensor-parallel kernels are f32 or bf16 throughout (inputs {dtype})"
    m, d = ins[0].shape
    tried = []
    for activation, n in (("relu", 2), ("swiglu", 3)):
        if len(params) != n or any(len(p.shape) != 2 for p in params):
            continue
        for layout in LAYOUTS:
            up = params[0].shape
            f = up[0] if layout == "out_in" else up[1]
            for swap in ((False,) if activation == "relu" else (False, True)):
                mod, x = _mlp_reference(activation, layout, m, d, f, dtype, swap)
                if [tuple(p.shape) for p in mod.parameters()] != [tuple(p.shape) for p in params]:
                    break
                if not swap:
                    tried.append(f"{activation} MLP ({layout})")
                with export_guard():
                    ep = torch.export.export(mod, (x,)).run_decompositions()
                ref = graph_from_export(ep, "reference", "<shard reference>")
                if canonical_key(ref) == canonical_key(graph):
                    return Block("mlp", {"tokens": m, "hidden": d, "intermediate": f}, dtype, activation, layout)
    for layout, h, kvh, hd in _attention_candidates(graph, m, d, params):
        tried.append(f"attention block ({h} heads, {kvh} KV heads of {hd}, {layout})")
        mod, x = _attention_reference(layout, m, d, h, kvh, hd, dtype)
        with export_guard():
            ep = torch.export.export(mod, (x,)).run_decompositions()
        if canonical_key(graph_from_export(ep, "reference", "<shard reference>")) == canonical_key(graph):
            return Block("attention", {"seq": m, "hidden": d, "heads": h, "kv_heads": kvh, "head_dim": hd}, dtype,
                         "softmax", layout)
    if not tried:
        return ("not a shardable block: its operands fit no tensor-parallel block of agentforge/shard.py "
                f"(an MLP takes x [M, D] and 2 or 3 weights, an attention block x [S, D] and wq, wk, wv, wo; "
                f"this graph has weights {[list(p.shape) for p in params]})")
    return f"not a shardable block: the operands fit a {' or '.join(tried)}, but the graph computes something else"


def shard_task_kernel(graph, sockets: int, machine: str = "sn40l") -> tuple[ShardChoice, Block] | str:
    """The tensor-parallel kernel for a task's graph on ``sockets`` sockets of ``machine``'s node
    (tiles searched by ``pick_degree`` on that node's links), or why there is none: the graph is
    not a shardable block, or the block's sizes cannot be split that many ways. The choice's
    ``seconds`` also holds the same block's best time on one socket (key 1) where it was timed:
    the task's N is honoured, and what it costs or buys against one socket is reported."""
    from asp_lang.node import node_for

    b = match_block(graph)
    if isinstance(b, str):
        return b
    kw = dict(machine=machine, dtype=b.dtype, activation=b.activation, layout=b.layout)
    try:
        choice = pick_degree(b.block, b.sizes, degrees=(sockets,), node=node_for(machine, sockets), **kw)
    except ValueError as e:
        return f"the task is a {b.describe()}, but it cannot be split over {sockets} sockets: {e}"
    try:
        choice.seconds.update(pick_degree(b.block, b.sizes, degrees=(1,), **kw).seconds)
    except ValueError:   # no one-socket tiles fit: nothing to compare with
        pass
    return choice, b


__all__ = ["mlp_source", "attention_source", "mlp_stack_source", "decoder_layer_source", "pick_degree", "ShardChoice",
           "Block", "match_block", "shard_task_kernel"]
