"""The mixture-of-experts template: its pattern matcher (a dense-masked mixture of experts: every
expert's MLP on every token, weighted by a gate matrix with at most k non-zeros per token and
summed over experts, found whole) and the routed kernel built for a matched region
(``selector`` / ``partition`` / ``merge``: each token through its k experts only)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ...capture import AtenGraph, AtenNode, Ref
from ...lowering import (KernelBuilder, OpKernel, UnsupportedOpError, asp_dtype, asp_literal, aten_name,
                         divisor_at_most, elementwise_kind, elementwise_parts, is_noop_expand)
from ..graph import RelabelWalk, row_kind, semantic_nodes
from .base import RegionCode, Template, built_by

# moe: tokens per tile of the grouped form (tm; 0: token by token), hidden columns per accum step (tk),
# accum copies, banking of the on-chip expert weights, memory parallelism and the copies of the grouped
# form's per-tile routing maps. Grouped, tm tokens share each weight tile read from SRAM, so the
# expert products are compute-bound and want every PCU (par ~ 1000); smaller tm pads each expert's
# group less (at most E (tm - 1) pad rows). Token by token, each token re-reads its experts' weights
# from SRAM and their read bandwidth (par_buf) bounds it. Searched by coordinate descent from the
# first values (the grouped form's best neighbourhood on sn40l).
# (no tk = 256: checking a kernel in its timed configuration needs FFN >= 3 tk, and the interpreter
# expands each routed tile's expert weights: at tk = 256 that is past its caps, so the plan would be
# 'uncheckable', docs/evaluation.md section 2.1)
MOE_GRID = {"tm": (32, 64, 16, 0), "tk": (128, 64), "par": (1000, 960, 896, 768, 640, 512, 384, 256, 128),
            "par_buf": (64, 128, 192, 256, 320, 384, 448), "par_mem": (8,), "par_route": (4, 16)}
MOE_MIN_TRIES = 64  # a few rounds of coordinate descent: a moe region is most of its task's time


@dataclass
class MoeMatch:
    """A dense-masked mixture of experts: every expert's MLP runs on every token and a gate matrix
    with at most ``k`` non-zero entries per token weights the experts' outputs, summed over experts.
    Routed, each token goes only through the experts its gates name: E/k fewer flops."""
    nodes: list[int]                    # semantic indices the region computes
    gates: str                          # G [T, E]: at most k non-zeros per row (read from HBM)
    k: int
    x: str                              # the tokens, viewed [T, D]
    up: list[tuple[AtenNode, str]]      # (bmm of the expanded tokens, its stacked weight [E, D, F])
    hidden: list[AtenNode]              # elementwise ops from the up products to the down product, in order
    h: str                              # the value the down product reads ([E, T, F])
    down: tuple[AtenNode, str]          # (bmm, its stacked weight [E, F, N])
    post: list[AtenNode]                # elementwise ops of one operand on the expert outputs, in order
    out: AtenNode                       # the sum over experts
    dims: tuple[int, int, int, int, int]   # E, T, D, F, N

    @property
    def expert_out(self) -> AtenNode:
        """The node of the expert outputs [E, T, N] the gates weight (the down product or its last post op)."""
        return self.post[-1] if self.post else self.down[0]


def _moe_nonzeros(w: RelabelWalk, gates: str, T: int, E: int) -> int | None:
    """k when the gate matrix has at most k non-zero entries per row by construction, else None:
    ``where(idx[:, None] == arange(E), P, 0)`` (k = 1) or ``zeros.scatter(1, idx [T, k], src)``."""
    n = w.node(w.back(gates, []))
    if n is None:
        return None
    base = aten_name(n.target)
    if base == "where" and len(n.args) == 3 and isinstance(n.args[0], Ref) and w.is_zero(n.args[2]):
        cond = w.node(w.back(n.args[0].name, []))
        if cond is None or aten_name(cond.target) != "eq" or len(cond.args) != 2 or \
                not all(isinstance(a, Ref) for a in cond.args):
            return None
        for a, b in (cond.args, cond.args[::-1]):
            ar = w.node(w.back(b.name, []))
            # a column of one index per token against E distinct expert ids: one True per row at most
            if ar is not None and aten_name(ar.target) == "arange" and b.name in w.constants and \
                    math.prod(w.g.spec(b).shape) == E and tuple(w.g.spec(a).shape)[-2:] == (T, 1) and \
                    math.prod(w.g.spec(a).shape) == T:
                return 1
        return None
    if base == "scatter" and len(n.args) >= 3 and isinstance(n.args[1], int) and n.args[1] % 2 == 1 and \
            w.is_zero(n.args[0]) and isinstance(n.args[2], Ref) and not n.kwargs.get("reduce"):
        ishape = tuple(w.g.spec(n.args[2]).shape)
        if len(ishape) == 2 and ishape[0] == T and 1 <= ishape[1] <= E:
            return ishape[1]
    return None


def moe_matches(graph: AtenGraph) -> list[MoeMatch]:
    """Every dense-masked mixture of experts of ``graph`` whose intermediates nothing else reads."""
    sem = semantic_nodes(graph)
    sem_index = {n.name: i for i, n in enumerate(sem)}
    w = RelabelWalk(graph)
    found = []
    for node in sem:
        if aten_name(node.target) != "sum":
            continue
        try:
            m = _match_moe(w, node, sem_index)
        except (KeyError, IndexError, TypeError, ValueError, AttributeError, UnsupportedOpError):
            m = None
        if m is not None and not any(set(m.nodes) & set(f.nodes) for f in found):
            found.append(m)
    return found


def _match_moe(w: RelabelWalk, s: AtenNode, sem_index: dict) -> MoeMatch | None:
    g = w.g
    if len(s.args) < 2 or not isinstance(s.args[0], Ref) or s.kwargs.get("dtype") is not None:
        return None
    src = g.spec(s.args[0])
    dims = [s.args[1]] if isinstance(s.args[1], int) else list(s.args[1] or [])
    if len(src.shape) != 3 or [d % 3 for d in dims] != [0]:
        return None
    E, T, N = src.shape
    chain: list[str] = []               # values only the region may read
    mul = w.node(w.back(s.args[0].name, chain))
    if mul is None or aten_name(mul.target) != "mul" or len(mul.args) != 2 or \
            not all(isinstance(a, Ref) for a in mul.args):
        return None
    chain.append(mul.name)
    nodes = [s, mul]
    # the gate side: G [T, E] transposed to [E, T] and unsqueezed to [E, T, 1]
    gate = eo = None
    for a, b in (mul.args, mul.args[::-1]):
        if tuple(g.spec(a).shape) != (E, T, 1):
            continue
        gpath: list[str] = []
        pn = w.node(w.back(a.name, gpath))
        if pn is None or aten_name(pn.target) not in ("permute", "t", "transpose") or len(pn.outs[0].shape) != 2:
            continue
        if aten_name(pn.target) == "permute" and [d % 2 for d in pn.args[1]] != [1, 0]:
            continue
        if tuple(g.spec(pn.args[0]).shape) != (T, E):
            continue
        gate, eo = (pn, gpath), b
        break
    if gate is None:
        return None
    pn, gpath = gate
    chain += gpath + [pn.name]
    nodes.append(pn)
    gates = pn.args[0].name
    k = _moe_nonzeros(w, gates, T, E)
    if k is None:
        return None
    # the expert outputs: [elementwise ops of one operand] after the down product
    v = w.back(eo.name, chain)
    post: list[AtenNode] = []
    while True:
        n = w.node(v)
        if n is None or row_kind(n, g) != "elementwise" or len(n.refs()) != 1 or \
                tuple(n.outs[0].shape) != (E, T, N) or n.name in w.constants:
            break
        post.append(n)
        nodes.append(n)
        chain.append(n.name)
        v = w.back(n.refs()[0].name, chain)
    post.reverse()
    down = w.node(v)
    if down is None or aten_name(down.target) != "bmm" or len(down.args) != 2 or \
            not all(isinstance(a, Ref) for a in down.args):
        return None
    chain.append(down.name)
    nodes.append(down)
    h = w.back(down.args[0].name, chain)
    F = g.spec(down.args[0]).shape[-1]

    def weight(ref: Ref, shape: tuple[int, int, int]) -> str | None:
        root = w.back(ref.name, [])
        if root in w.constants or math.prod(g.spec(root).shape) != math.prod(shape) or \
                tuple(g.spec(ref).shape) != shape:
            return None
        return root

    w_down = weight(down.args[1], (E, F, N))
    if w_down is None:
        return None
    # the up products of the expanded tokens, and the elementwise ops combining them
    up: list[tuple[AtenNode, str]] = []
    hidden: list[AtenNode] = []
    tokens: set[str] = set()
    seen: set[str] = set()

    def visit(v: str) -> bool:
        n = w.node(v)
        if n is None or n.name in w.constants:
            return False
        if n.name in seen:
            return True
        seen.add(n.name)
        chain.append(n.name)
        nodes.append(n)
        if aten_name(n.target) == "bmm" and len(n.args) == 2 and all(isinstance(a, Ref) for a in n.args):
            xe = w.node(w.back(n.args[0].name, chain))
            if xe is None or aten_name(xe.target) != "expand" or is_noop_expand(xe, g) or \
                    not isinstance(xe.args[0], Ref):
                return False
            tin = tuple(g.spec(xe.args[0]).shape)
            D = xe.outs[0].shape[-1]
            if tuple(xe.outs[0].shape) != (E, T, D) or (1,) * (3 - len(tin)) + tin != (1, T, D) or \
                    tuple(n.outs[0].shape) != (E, T, F):
                return False
            wt = weight(n.args[1], (E, D, F))
            if wt is None:
                return False
            tokens.add(w.back(xe.args[0].name, []))
            if xe.name not in seen:
                seen.add(xe.name)
                chain.append(xe.name)
                nodes.append(xe)
            up.append((n, wt))
            return True
        if row_kind(n, g) == "elementwise" and tuple(n.outs[0].shape) == (E, T, F) and n.refs():
            hidden.append(n)
            return all(visit(w.back(r.name, chain)) for r in n.refs())
        return False

    if not visit(h) or len(tokens) != 1 or not up:
        return None
    x = tokens.pop()
    D = g.spec(up[0][0].args[0]).shape[-1]
    if any(asp_dtype(g.spec(v_)) != "f32" for v_ in [gates, x, w_down] + [wt for _, wt in up]) or asp_dtype(s.outs[0]) != "f32":
        return None  # the routed kernel computes in f32 throughout, as the dense graph does
    inside = set(chain) | {n.name for n in nodes}
    if not w.exclusive(chain, inside) or any(n.name not in sem_index for n in nodes):
        return None
    hidden.sort(key=lambda n: w.order[n.name])
    up.sort(key=lambda u: w.order[u[0].name])
    return MoeMatch(sorted({sem_index[n.name] for n in nodes}), gates, k, x, up, hidden, h, (down, w_down), post, s,
                (E, T, D, F, N))


class MoeKernel(RegionCode):
    """A dense-masked mixture of experts, routed: each token goes through the k experts its
    non-zero gates name, and only those (E/k fewer flops than the dense form).

    Two forms, by the ``tm`` parameter:

    - ``tm = 0``, one kernel, token by token: per token the indices and weights of its gates
      select the experts (``selector``); ``partition`` sends the token to them; each expert's
      weights, held on chip (``bufferize``), are ``expand``ed over its tokens and streamed past an
      ``accum`` that computes the expert MLP one hidden tile at a time
      (``acc + act(x W_up[:, j]) W_down[j, :]``); ``merge`` puts the results back in token order,
      where they are weighted by the gates and summed over the k slots. Every token re-reads its
      experts' weights from SRAM: a [1, D] x [D, TF] product reads 2 bytes per flop, so the PMUs'
      read bandwidth, not the PCUs, bounds it (about 0.4 of the f32 peak on sn40l).
    - ``tm >= 2``, grouped, two kernels (:meth:`_grouped`): the first sorts the routed tokens by
      expert into tiles of ``tm`` tokens (each expert's group padded to a multiple of ``tm``, so
      every tile belongs to one expert), gathers their rows, runs each tile through its expert as
      a [tm, D] x [D, TF] product (``tm`` tokens share every weight tile read: compute-bound) and
      scatters each token's expert output to its row of the expert-output value [E, T, N] (only
      the T x k routed rows are written, the rest never read); the second gathers each token's k
      rows, weights them by the gates and sums them in expert order, as the dense sum does."""

    def build(self) -> "OpKernel | list[OpKernel]":
        g = self.g
        moe = self.whole_match(moe_matches(g), "mixture of experts")
        E, T, D, F, N = moe.dims
        p = self.region.params
        tm = int(p.get("tm", MOE_GRID["tm"][0]))   # a plan that does not say (an LLM's): grouped
        if tm >= 2:
            if moe.k >= E:
                raise UnsupportedOpError("grouped experts need an expert each token does not use (k < E)")
            return self._grouped(moe, tm)
        return self._per_token(moe)

    # ---------------------------------------------------------------- shared parts
    def _start(self, moe: MoeMatch, name: str) -> KernelBuilder:
        E, T, D, F, N = moe.dims
        kb = KernelBuilder(name)
        kb.fns.append(f"  sizes T = {T}, D = {D}, E = {E}, F = {F}, N = {N}, TF = {self._tf(moe)}")
        self.inputs, self.views = [], []
        return kb

    def _tf(self, moe: MoeMatch) -> int:
        return divisor_at_most(moe.dims[3], int(self.region.params.get("tk", 128)))   # hidden columns per step

    def _param(self, kb: KernelBuilder, name: str, shape_names: tuple, shape: tuple) -> str:
        self.inputs.append(name)
        self.views.append(shape)
        return kb.param("f32", shape_names)

    def _route_fn(self, kb: KernelBuilder, moe: MoeMatch, rows: str, extra: list[tuple[str, str]] = (),
                  result: str = "(i, take(g, i, axis=1))") -> str:
        """A fn of a gates tile [rows, E]: ``i``, the experts with a non-zero gate in ascending order
        (the order torch's sum over experts adds them in), padded with zero-gate experts."""
        E = moe.dims[0]
        return kb.fn(["g"], result, [
            ("r", f"cast(iota([{rows}, E], axis=1), f32)"),
            ("key", f"where(abs(g) > 0.0, 0.0 - r, {asp_literal(-float(E))} - r)"),
            ("i", f"argtopk(key, k={moe.k}, axis=1)"), *extra])

    def _experts(self, kb: KernelBuilder, moe: MoeMatch, parts: str, rows: int, par: int, par_b: int,
                 par_m: int, par_s: int) -> str:
        """The expert MLP over a partitioned stream [E, ?] of [rows, D] token tiles: each expert's
        weights held on chip (``bufferize``) and ``expand``ed over its tiles; returns [E, ?] of
        [rows, N] (post ops applied)."""
        g = self.g
        E, T, D, F, N = moe.dims
        tf = self._tf(moe)
        like = kb.op(f"copy({parts})", 2 + len(moe.up))
        (xr,) = kb.op(f"repeat({like[0]}, F / TF)")

        def weights(name: str, shape_names: tuple, shape: tuple, tile: str, like_: str) -> str:
            (ws,) = kb.op(f"load({self._param(kb, name, shape_names, shape)}, tile={tile}, par={par_m})")
            (wb,) = kb.op(f"bufferize({ws}, rank=1, par={par_b})")      # [E] of buf[F / TF]: one expert each
            (we,) = kb.op(f"expand({wb}, like={like_})")                # over the tiles routed to it
            (wt,) = kb.op(f"streamify({we}, par={par_b})")
            return wt

        streams = [xr]
        params = ["xt"]
        self.lets = []
        for j, (node, wname) in enumerate(moe.up):
            streams.append(weights(wname, ("E", "D", "F"), (E, D, F), "[1, D, TF]", like[1 + j]))
            params.append(f"a{j}")
            self.expr[node.name] = self.let(f"matmul(xt, a{j})", "u")
        for node in moe.hidden:
            self.expr[node.name] = self.let(self._operands(node), "h")
        # the up products and the activation (one hidden tile per token tile and step), then the down
        # product accumulated over the hidden tiles: two operators, so each copy fits one PCU; they
        # share the ``par`` copies by their flops where the tiles are compute-bound (grouped), by the
        # bytes they read where each token re-reads its weight tiles (token by token)
        if rows > 1:
            up_w, down_w = len(moe.up), 1
        else:
            up_w, down_w = D + len(moe.up) * D * tf, tf + tf * N
        par_up = max(1, round(par * up_w / (up_w + down_w)))
        par_down = max(1, par - par_up)
        up = kb.fn(params, self.expr[self.resolve(moe.h)], self.lets)
        (hs,) = kb.op(f"map({', '.join(streams)}, fn={up}, par={par_up})")       # [E, ?, F / TF] of f32[rows, TF]
        down, wdown = moe.down
        wd = weights(wdown, ("E", "F", "N"), (E, F, N), "[1, TF, N]", like[-1])
        mac = kb.fn(["acc", "h", "b"], "acc + matmul(h, b)")
        (o,) = kb.op(f"accum({hs}, {wd}, rank=1, init=zeros([{rows}, N]), fn={mac}, par={par_down})")
        if moe.post:
            self.lets = []
            self.expr[down.name] = "t"
            for node in moe.post:
                self.expr[node.name] = self.let(self._operands(node), "q")
            post = kb.fn(["t"], self.expr[moe.post[-1].name], self.lets)
            (o,) = kb.op(f"map({o}, fn={post}, par={par_s})")
        return o

    def _operands(self, node: AtenNode) -> str:
        ops, fexpr, _ = elementwise_parts(node, self.g, elementwise_kind(aten_name(node.target)))
        return fexpr([self.expr[self.resolve(o.value)] if o.kind == "tensor" else asp_literal(o.value) for o in ops])

    def _comment(self, moe: MoeMatch, what: str) -> str:
        return f"fused mixture of experts, routed (top-{moe.k} of {moe.dims[0]}){what}: " + \
            ", ".join(n.target for n in self.nodes)

    # ---------------------------------------------------------------- token by token
    def _per_token(self, moe: MoeMatch) -> OpKernel:
        E, T, D, F, N = moe.dims
        k = moe.k
        p = self.region.params
        par, par_m, par_b = int(p.get("par", 256)), int(p.get("par_mem", 8)), int(p.get("par_buf", 128))
        par_s = min(16, par)                                # the per-token maps (routing, gating)
        kb = self._start(moe, f"fused_{self.ri}_moe")
        route = self._route_fn(kb, moe, "1")
        (gs,) = kb.op(f"load({self._param(kb, moe.gates, ('T', 'E'), (T, E))}, tile=[1, E], par={par_m})")
        idx, gv = kb.op(f"map({gs}, fn={route}, par={par_s})", 2)
        (sel,) = kb.op(f"selector({idx}, n=E)")
        s_part, s_merge = kb.op(f"copy({sel})", 2)
        (xs,) = kb.op(f"load({self._param(kb, moe.x, ('T', 'D'), (T, D))}, tile=[1, D], par={par_m})")
        (parts,) = kb.op(f"partition({xs}, {s_part})")
        o = self._experts(kb, moe, parts, 1, par, par_b, par_m, par_s)
        (m,) = kb.op(f"merge({o}, {s_merge})")                          # [T, k] of f32[1, N]
        ys = self._combine(kb, moe, m, gv, par_s)
        out = kb.result("f32", ("T", "N"))
        kb.do(f"store({out}, {ys}, par={par_m})")
        return OpKernel(moe.out.name, "fused.moe", kb.text(self._comment(moe, "")), self.inputs, self.views,
                        [moe.out.name], [(T, N)])

    def _combine(self, kb: KernelBuilder, moe: MoeMatch, m: str, gv: str, par_s: int) -> str:
        """[T, k] of [1, N] expert outputs and [T] of [1, k] gates -> [T] of [1, N]: weighted, summed
        over the k slots in their order."""
        if moe.k == 1:
            (mf,) = kb.op(f"flatten({m}, dims=[0, 1])")
            scale = kb.fn(["o", "w"], "o * w")
            (ys,) = kb.op(f"map({mf}, {gv}, fn={scale}, par={par_s})")
            return ys
        one = kb.fn(["w"], "w")
        (gk,) = kb.op(f"flatmap({gv}, fn={one}, split=[1, 1])")    # [T, k] of f32[1, 1]
        comb = kb.fn(["acc", "o", "w"], "acc + o * w")
        (ys,) = kb.op(f"accum({m}, {gk}, rank=1, init=zeros([1, N]), fn={comb}, par={par_s})")
        return ys

    # ---------------------------------------------------------------- grouped
    def _grouped(self, moe: MoeMatch, tm: int) -> list[OpKernel]:
        E, T, D, F, N = moe.dims
        k = moe.k
        p = self.region.params
        par, par_m, par_b = int(p.get("par", 256)), int(p.get("par_mem", 8)), int(p.get("par_buf", 128))
        par_s = int(p.get("par_route", 4))                     # the per-tile routing and packing maps
        # every expert's group padded to a multiple of tm: at most T k / tm + E tiles, whatever the routing
        nt = -(-(T * k + E * (tm - 1)) // tm)
        kb = self._start(moe, f"fused_{self.ri}_moe")
        kb.fns.append(f"  sizes TM = {tm}, NT = {nt}")
        # the routing of all tokens at once, on one [T, E] tile of gates: the one-hot m of each token's
        # k experts, every expert group's end in the padded sorted order, each (token, expert)'s sorted
        # position (-1 where not routed), and an expert token 0 does not use (its row of the expert
        # outputs is never read: the pad rows are written there)
        route = self._route_fn(kb, moe, "T", [
            ("m", "put(zeros([T, E]), i, 1.0, axis=1)"),
            ("c", "sum(m, axis=0)"),
            ("end", "cumsum(floor((c + (TM - 1)) / TM) * TM, axis=1)"),
            ("pos", "where(m > 0.0, end - floor((c + (TM - 1)) / TM) * TM + cumsum(m, axis=0) - m, -1.0)"),
            ("free", "argmin(slice(m, axis=0, start=0, stop=1), axis=1)")],
            "(pos, end, free)")
        (gs,) = kb.op(f"load({self._param(kb, moe.gates, ('T', 'E'), (T, E))}, tile=[T, E], par={par_m})")
        pos, end, free = kb.op(f"map({gs}, fn={route})", 3)             # [] of [T, E], [1, E], [1, 1]
        rp, re_, rf = (kb.op(f"repeat({s}, NT)")[0] for s in (pos, end, free))   # [NT]
        # per sorted tile: its expert (the group its first position falls in), its tokens (0 for a
        # pad row) and each row's destination in the expert outputs [E T, N] (e T + t; pads: free T)
        tile = kb.fn(["pos", "end", "free"], "(cast(e, i32), cast(tok, i32), cast(dst, i32))", [
            ("p0", "cast(pos(0) * TM, f32)"),
            ("e", f"minimum(sum(where(end <= p0, 1.0, 0.0), axis=1), {asp_literal(float(E - 1))})"),
            ("col", "take(pos, broadcast(cast(e, i32), [T, 1]), axis=1)"),
            ("hit", "where(col == p0 + cast(iota([1, TM], axis=1), f32), 1.0, 0.0)"),
            ("tok", "sum(hit * cast(iota([T, 1], axis=0), f32), axis=0)"),
            ("dst", "where(sum(hit, axis=0) > 0.0, e * T + tok, cast(free, f32) * T)")])
        te, tt, td = kb.op(f"map({rp}, {re_}, {rf}, fn={tile}, par={par_s})", 3)   # [NT] of [1,1], [1,TM], [1,TM]
        one = kb.fn(["v"], "v")
        (ti,) = kb.op(f"flatmap({tt}, fn={one}, split=[1, 1])")          # [NT, TM] of i32[1, 1]
        (rows,) = kb.op(f"gather({self._param(kb, moe.x, ('T', 'D'), (T, D))}, {ti}, tile=[1, D], par={par_m})")
        shift = kb.fn(["acc", "r"], "concat(slice(acc, axis=0, start=1), r, axis=0)")
        (xt,) = kb.op(f"accum({rows}, rank=1, init=zeros([TM, D]), fn={shift}, par={par_s})")  # [NT] of [TM, D]
        (sel,) = kb.op(f"selector({te}, n=E)")
        s_part, s_merge = kb.op(f"copy({sel})", 2)
        (parts,) = kb.op(f"partition({xt}, {s_part})")                    # [E, ?] of [TM, D]
        o = self._experts(kb, moe, parts, tm, par, par_b, par_m, par_s)
        (m,) = kb.op(f"merge({o}, {s_merge})")                            # [NT, 1] of [TM, N]
        (mf,) = kb.op(f"flatten({m}, dims=[0, 1])")
        (yr,) = kb.op(f"flatmap({mf}, fn={one}, split=[1, N], par={par_s})")   # [NT, TM] of [1, N]
        (di,) = kb.op(f"flatmap({td}, fn={one}, split=[1, 1])")          # [NT, TM] of i32[1, 1]
        y = kb.result("f32", ("E * T", "N"))
        kb.do(f"scatter({y}, {di}, {yr}, par={par_m})")
        eo = moe.expert_out
        first = OpKernel(eo.name, "fused.moe", kb.text(self._comment(moe, ", grouped: sorted tiles of tokens")),
                         self.inputs, self.views, [eo.name], [(E * T, N)])
        # the combine: each token's k expert outputs gathered, weighted by its gates, summed
        kb = self._start(moe, f"fused_{self.ri}_moe_combine")
        route = self._route_fn(kb, moe, "1", [("q", "i * T + pos(0)")], "(q, take(g, i, axis=1))")
        (gs,) = kb.op(f"load({self._param(kb, moe.gates, ('T', 'E'), (T, E))}, tile=[1, E], par={par_m})")
        q, gv = kb.op(f"map({gs}, fn={route}, par=16)", 2)
        one = kb.fn(["v"], "v")
        (qi,) = kb.op(f"flatmap({q}, fn={one}, split=[1, 1])")            # [T, k] of i32[1, 1]
        (yk,) = kb.op(f"gather({self._param(kb, eo.name, ('E * T', 'N'), (E * T, N))}, {qi}, tile=[1, N], "
                      f"par={par_m})")                                      # [T, k] of f32[1, N]
        ys = self._combine(kb, moe, yk, gv, 16)
        out = kb.result("f32", ("T", "N"))
        kb.do(f"store({out}, {ys}, par={par_m})")
        second = OpKernel(moe.out.name, "fused.moe_combine", kb.text(self._comment(moe, ", combine")), self.inputs,
                          self.views, [moe.out.name], [(T, N)])
        return [first, second]


TEMPLATE = Template("moe", MOE_GRID, built_by(MoeKernel), min_tries=MOE_MIN_TRIES)


# ------------------------------------------------------------------ grouped experts (already dispatched)

# experts: tokens per tile (tm), hidden columns per accum step (tk), accum copies, banking of the
# on-chip expert weights and memory parallelism. The expert products are compute-bound at tm >= 32,
# so they want every PCU
EXPERTS_GRID = {"tm": (64, 128, 32), "tk": (128, 64), "par": (1000, 960, 896, 768, 640, 512, 256),
                "par_buf": (64, 128, 256), "par_mem": (8,)}
EXPERTS_MIN_TRIES = 40


def experts_matches(graph: AtenGraph) -> list[MoeMatch]:
    """Every group of expert MLPs on tokens already dispatched to them (``x [E, C, D]``): batched
    up products of ``x`` with stacked weights ``[E, D, F]``, elementwise ops, and a batched down
    product with ``[E, F, N]``, whose intermediates nothing else reads. Returned as a
    :class:`MoeMatch` without gates (``k = 0``) whose ``out`` is the down product."""
    sem = semantic_nodes(graph)
    sem_index = {n.name: i for i, n in enumerate(sem)}
    w = RelabelWalk(graph)
    # a dense-masked mixture of experts holds the same products (of the tokens expanded to every
    # expert): it is routed whole, never grouped densely
    found: list[MoeMatch] = []
    routed = {i for m in moe_matches(graph) for i in m.nodes}
    for node in sem:
        if aten_name(node.target) != "bmm" or sem_index[node.name] in routed:
            continue
        try:
            m = _match_experts(w, node, sem_index)
        except (KeyError, IndexError, TypeError, ValueError, AttributeError, UnsupportedOpError):
            m = None
        if m is not None and not set(m.nodes) & routed and not any(set(m.nodes) & set(f.nodes) for f in found):
            found.append(m)
    return found


def _match_experts(w: RelabelWalk, down: AtenNode, sem_index: dict) -> MoeMatch | None:
    g = w.g
    if len(down.args) != 2 or not all(isinstance(a, Ref) for a in down.args):
        return None
    E, F, N = g.spec(down.args[1]).shape
    E2, T, F2 = g.spec(down.args[0]).shape
    if (E2, F2) != (E, F):
        return None
    chain: list[str] = []
    nodes = [down]
    w_down = w.back(down.args[1].name, [])
    if w_down in w.constants or tuple(g.spec(w_down).shape) != (E, F, N):
        return None
    h = w.back(down.args[0].name, chain)
    up: list[tuple[AtenNode, str]] = []
    hidden: list[AtenNode] = []
    tokens: set[str] = set()
    seen: set[str] = set()

    def visit(v: str) -> bool:
        n = w.node(v)
        if n is None or n.name in w.constants:
            return False
        if n.name in seen:
            return True
        seen.add(n.name)
        chain.append(n.name)
        nodes.append(n)
        if aten_name(n.target) == "bmm" and len(n.args) == 2 and all(isinstance(a, Ref) for a in n.args):
            xv = w.back(n.args[0].name, [])
            wt = w.back(n.args[1].name, [])
            D = g.spec(n.args[0]).shape[-1]
            if tuple(g.spec(xv).shape) != (E, T, D) or wt in w.constants or \
                    tuple(g.spec(wt).shape) != (E, D, F) or tuple(n.outs[0].shape) != (E, T, F):
                return False
            tokens.add(xv)
            up.append((n, wt))
            return True
        if row_kind(n, g) == "elementwise" and tuple(n.outs[0].shape) == (E, T, F) and n.refs():
            hidden.append(n)
            return all(visit(w.back(r.name, chain)) for r in n.refs())
        return False

    if not visit(h) or len(tokens) != 1 or not up or not hidden:
        return None   # without an activation between them the products are plain batched matmuls
    x = tokens.pop()
    D = g.spec(x).shape[-1]
    if any(asp_dtype(g.spec(v_)) != "f32" for v_ in [x, w_down] + [wt for _, wt in up]) or \
            asp_dtype(down.outs[0]) != "f32":
        return None
    inside = set(chain) | {n.name for n in nodes}
    if not w.exclusive(chain, inside) or any(n.name not in sem_index for n in nodes) or x in inside:
        return None
    hidden.sort(key=lambda n: w.order[n.name])
    up.sort(key=lambda u: w.order[u[0].name])
    return MoeMatch(sorted({sem_index[n.name] for n in nodes}), "", 0, x, up, hidden, h, (down, w_down), [], down,
                    (E, T, D, F, N))


class ExpertsKernel(MoeKernel):
    """Expert MLPs on tokens already grouped by expert (``x [E, C, D]``), one kernel: each expert's
    weights held on chip (``bufferize``) and ``expand``ed over its tiles of ``tm`` tokens, the up
    products and the activation one hidden tile at a time, the down product accumulated over the
    hidden tiles (``acc + act(x W_up[:, j]) W_down[j, :]``): the [E, C, F] hidden values never
    leave the chip and ``x`` is read once."""

    def build(self) -> OpKernel:
        moe = self.whole_match(experts_matches(self.g), "group of experts")
        E, T, D, F, N = moe.dims
        p = self.region.params
        tm = divisor_at_most(T, int(p.get("tm", 64)))
        par, par_m, par_b = int(p.get("par", 256)), int(p.get("par_mem", 8)), int(p.get("par_buf", 64))
        kb = self._start(moe, f"fused_{self.ri}_experts")
        kb.fns.append(f"  sizes TM = {tm}")
        (xs,) = kb.op(f"load({self._param(kb, moe.x, ('E', 'T', 'D'), (E, T, D))}, tile=[1, TM, D], par={par_m})")
        o = self._experts(kb, moe, xs, tm, par, par_b, par_m, 16)          # [E, T / TM] of [TM, N]
        out = kb.result("f32", ("E", "T", "N"))
        kb.do(f"store({out}, {o}, par={par_m})")
        comment = "fused grouped experts: " + ", ".join(n.target for n in self.nodes)
        return OpKernel(moe.out.name, "fused.experts", kb.text(comment), self.inputs, self.views, [moe.out.name],
                        [(E, T, N)])


EXPERTS_TEMPLATE = Template("experts", EXPERTS_GRID, built_by(ExpertsKernel), min_tries=EXPERTS_MIN_TRIES)
