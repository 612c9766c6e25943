"""The kernel of a grouped (per-expert) matmul: ``transformers::grouped_mm_fallback``.

Why its own module: it is the one op of a Mixture-of-Experts forward that carries the experts'
FLOPs in Hugging Face models (``grouped_mm_experts_forward``: the routed rows sorted by expert,
then ``grouped_mm(rows, W[E, K, N], offs)`` twice), and it is data-dependent: which weight a row
meets is given by ``offs`` at run time. The op-by-op baseline (:mod:`agentforge.lowering`)
dispatches it here.

Semantics (the fallback in ``transformers.integrations.moe``): ``input [S, K]`` holds rows sorted
by expert, ``offs [E]`` their cumulative counts per expert (nondecreasing, ``offs[-1] <= S``);
row ``s`` with ``offs[e-1] <= s < offs[e]`` is ``input[s] @ weight[e]``; rows from ``offs[-1]`` on
are zero.

The kernel: every expert's rows (and the rows past ``offs[-1]``, a zero group) are padded to a
multiple of ``TM``, so each tile of ``TM`` rows belongs to one group; there are at most
``NT = ceil((S + (E + 1) (TM - 1)) / TM)`` tiles, whatever ``offs`` says. Per tile, a fn of
``offs`` finds its group and its rows; the rows are gathered, multiplied by their expert's
weight tiles (gathered by expert, ``TK`` rows of ``K`` at a time) and scattered back to their own
rows. A pad row repeats its tile's last real row and a tile past the last group repeats the last
tile, so every write of a row writes the same value; the zero group's tiles are written as
zeros. FLOPs done: ``2 NT TM K N`` (``2 S K N`` useful).
"""

from __future__ import annotations

from .capture import AtenGraph, AtenNode, Ref
from .lowering import (TILE_CAP, KernelBuilder, OpKernel, UnsupportedOpError, asp_dtype, asp_literal,
                       divisor_at_most, kernel_name)

#: graph targets lowered here (same signature: input [S, K], weight [E, K, N], offs [E])
GROUPED_MM_TARGETS = frozenset({"transformers.grouped_mm_fallback.default"})

#: most rows per tile: a tile's weight reads are shared by this many rows
MAX_TM = 32


def default_tile_rows(S: int, E: int) -> int:
    """Rows per tile: the largest power of two up to :data:`MAX_TM` whose worst-case padding,
    ``(E + 1) (TM - 1)`` rows, is at most the ``S`` real rows (at most twice the useful work)."""
    tm = 1
    while tm * 2 <= MAX_TM and (E + 1) * (tm * 2 - 1) <= S:
        tm *= 2
    return tm


def tile_count(S: int, E: int, tm: int) -> int:
    """Tiles of ``tm`` rows that hold ``S`` rows in ``E`` expert groups and a zero group, each
    padded to a multiple of ``tm`` (the worst case over every ``offs``)."""
    return -(-(S + (E + 1) * (tm - 1)) // tm)


def lower_grouped_mm(node: AtenNode, graph: AtenGraph, tm: int | None = None) -> OpKernel:
    """The kernel of one grouped matmul node (see the module docstring)."""
    if len(node.args) < 3 or not all(isinstance(a, Ref) for a in node.args[:3]):
        raise UnsupportedOpError(f"not supported: {node.target} without tensor input, weight and offs")
    sx, sw, so = (graph.spec(a) for a in node.args[:3])
    if len(sx.shape) != 2 or len(sw.shape) != 3 or len(so.shape) != 1:
        raise UnsupportedOpError(f"not supported: {node.target} on input {list(sx.shape)}, weight "
                                 f"{list(sw.shape)}, offs {list(so.shape)} (needs [S, K], [E, K, N], [E])")
    (S, K), (E, K2, N) = sx.shape, sw.shape
    if K2 != K or so.shape[0] != E:
        raise UnsupportedOpError(f"not supported: {node.target} with mismatched sizes {list(sx.shape)}, "
                                 f"{list(sw.shape)}, {list(so.shape)}")
    dt = asp_dtype(sx)
    if asp_dtype(sw) != dt or asp_dtype(so) != "i32":
        raise UnsupportedOpError(f"not supported: {node.target} with mixed dtypes")
    if N > TILE_CAP:
        raise UnsupportedOpError(f"not supported: {node.target} with {N} output columns (at most {TILE_CAP})")
    if S >= 1 << 24:
        raise UnsupportedOpError(f"not supported: {node.target} over {S} rows (row indices are exact below 2^24)")
    tm = max(1, min(tm or default_tile_rows(S, E), TILE_CAP // N))
    tk = divisor_at_most(K, max(1, TILE_CAP // max(N, tm)))
    kt, nt = K // tk, tile_count(S, E, tm)
    kb = KernelBuilder(kernel_name(node))
    kb.fns.append(f"  sizes S = {S}, K = {K}, N = {N}, E = {E}, TM = {tm}, TK = {tk}, KT = {kt}, NT = {nt}")
    px = kb.param(dt, ("S * KT", "TK"))           # x[s, j TK:(j+1) TK] is row s KT + j
    pw = kb.param(dt, ("E * KT", "TK", "N"))        # weight[e, j TK:(j+1) TK, :] is block e KT + j
    po = kb.param("i32", (1, "E"))
    S_ = asp_literal(float(S))
    prev = ("concat(zeros([1, 1]), slice(of, axis=1, start=0, stop=E - 1), axis=1)" if E > 1 else "zeros([1, 1])")
    # per tile (pos(0)): its group e (E: the zero group past offs[-1]) and its rows in the input
    tile = kb.fn(["o"], "(cast(minimum(e, E - 1.0), i32), cast(src, i32), keep)", [
        ("of", "cast(o, f32)"),
        ("c", f"concat(of - {prev}, {S_} - slice(of, axis=1, start=E - 1, stop=E), axis=1)"),  # rows per group
        ("pc", "floor((c + (TM - 1.0)) / TM) * TM"),                                              # padded
        ("end", "cumsum(pc, axis=1)"),
        ("used", "slice(end, axis=1, start=E, stop=E + 1) / TM"),                                # tiles in use
        ("p0", "minimum(cast(pos(0), f32), used - 1.0) * TM"),
        ("e", "sum(where(end <= p0, 1.0, 0.0), axis=1)"),
        ("ei", "cast(e, i32)"),
        ("first", "take(concat(zeros([1, 1]), of, axis=1), ei, axis=1)"),
        ("start", "take(end - pc, ei, axis=1)"),
        ("local", "minimum(p0 - start + cast(iota([1, TM], axis=1), f32), take(c, ei, axis=1) - 1.0)"),
        ("src", "first + local"),
        ("keep", "where(e < E, 1.0, 0.0)")])
    (os_,) = kb.op(f"load({po}, tile=[1, E])")                           # [] of i32[1, E]
    (rs,) = kb.op("repeat(" + os_ + ", NT)")                             # [NT]
    te, ts, keep = kb.op(f"map({rs}, fn={tile})", 3, par=4)             # [NT] of i32[1, 1], i32[1, TM], f32[1, 1]
    ts_gather, ts_scatter = kb.op(f"copy({ts})", 2)
    (tsk,) = kb.op(f"repeat({ts_gather}, KT)")                           # [NT, KT] of i32[1, TM]
    one = kb.fn(["v"], "v")
    xi = kb.fn(["s"], "s * KT + pos(1)")
    (xis,) = kb.op(f"flatmap({tsk}, fn={xi}, split=[1, 1])")             # [NT, KT, TM] of i32[1, 1]
    (rows,) = kb.op(f"gather({px}, {xis}, tile=[1, TK])", par=4)        # [NT, KT, TM] of [1, TK]
    zero_x = f"zeros([TM, TK]{'' if dt == 'f32' else ', dtype=' + dt})"
    shift = kb.fn(["acc", "r"], "concat(slice(acc, axis=0, start=1), r, axis=0)" if tm > 1 else "r")
    (xt,) = kb.op(f"accum({rows}, rank=1, init={zero_x}, fn={shift})")  # [NT, KT] of [TM, TK]
    (tek,) = kb.op(f"repeat({te}, KT)")                                  # [NT, KT] of i32[1, 1]
    wi = kb.fn(["e"], "e * KT + pos(1)")
    (wis,) = kb.op(f"map({tek}, fn={wi})")
    (wt,) = kb.op(f"gather({pw}, {wis}, tile=[1, TK, N])", par=4)       # [NT, KT] of [TK, N]
    prod = "matmul(x, w)" if dt == "f32" else "cast(matmul(x, w), f32)"
    mac = kb.fn(["acc", "x", "w"], f"acc + {prod}")
    (acc,) = kb.op(f"accum({xt}, {wt}, rank=1, init=zeros([TM, N]), fn={mac})", par=16)   # [NT] of f32[TM, N]
    res = "where(k > 0.0, a, 0.0)" if dt == "f32" else f"cast(where(k > 0.0, a, 0.0), {dt})"
    (ym,) = kb.op(f"map({acc}, {keep}, fn={kb.fn(['a', 'k'], res)})", par=8)
    (yr,) = kb.op(f"flatmap({ym}, fn={one}, split=[1, N])")             # [NT, TM] of [1, N]
    (di,) = kb.op(f"flatmap({ts_scatter}, fn={one}, split=[1, 1])")     # [NT, TM] of i32[1, 1]
    out = node.outs[0]
    y = kb.result(dt, ("S", "N"))
    kb.do(f"scatter({y}, {di}, {yr})", par=4)
    what = f"{node.target} ({node.name}): {E} experts, tiles of {tm} rows"
    return OpKernel(node.name, node.target, kb.text(what), [sx.name, sw.name, so.name],
                    [(S * kt, tk), (E * kt, tk, N), (1, E)], [out.name], [(S, N)], layout=kb.layout(what))


__all__ = ["GROUPED_MM_TARGETS", "default_tile_rows", "lower_grouped_mm", "tile_count"]
