"""The attention template: its pattern matcher (softmax(ops(Q K^T or S)) V with a scale and a
constant mask, found whole) and the flash-attention kernel built for a matched region (an
online-softmax ``accum`` streams K/V blocks held on chip; the scores never reach HBM)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ...capture import TRANSPARENT_KINDS, AtenGraph, AtenNode, Ref, op_kind
from ...lowering import (KernelBuilder, OpKernel, UnsupportedOpError, asp_dtype, asp_literal, aten_name,
                         divisor_at_most, is_noop_expand)
from ..graph import const_and_alias_steps, consumers_of, is_alias, on_last_dim, semantic_nodes
from .base import RegionCode, Template, built_by

# attention: query rows (tm) and keys (tk) per block, accum copies (each needs ceil(fn ops / stages) PCUs),
# memory and buffer parallelism, K/V held on chip (1) or re-read from HBM per query block (0)
ATTN_GRID = {"tm": (128, 64), "tk": (256, 128), "par": (510, 500, 480, 448, 400, 340, 256, 128, 64, 16, 8),
             "par_mem": (4, 16, 1), "par_buf": (8,), "kv_buf": (1, 0)}
ATTN_MIN_TRIES = 264  # the whole grid: an attention region is most of its task's time


@dataclass
class AttentionMatch:
    """One matched attention pattern: softmax(ops(Q K^T or S)) V with Q/K/V read in place."""
    nodes: list[int]              # semantic indices the region computes
    mode: str                     # "qk": scores from Q K^T; "scores": scores read from a tensor
    q: str | None                 # [BH * G, Sq, D] contiguous (qk mode)
    k: str | None                 # [BH, Sk, D] contiguous (qk mode)
    s: str | None                 # [BH * G, Sq, Sk] contiguous (scores mode)
    v: str                        # [BH, Sk, Dv] contiguous
    group: int                    # query heads per K/V head (GQA)
    ops: list[tuple]              # between scores and softmax, in order: ("scale", c) | ("fill", mask, value)
                                  # | ("bias", mask)
    out: AtenNode                 # the second bmm
    dims: tuple[int, int, int, int, int]   # BH (K/V heads), Sq, Sk, D, Dv


def attention_matches(graph: AtenGraph) -> list[AttentionMatch]:
    """Every attention pattern of ``graph`` whose intermediates are used by nothing else."""
    sem = semantic_nodes(graph)
    sem_index = {n.name: i for i, n in enumerate(sem)}
    by_name = {n.name: n for n in graph.nodes}
    consumers = consumers_of(graph)
    outputs = {r.name for r in graph.outputs}
    _, constants = const_and_alias_steps(graph)
    found = []
    for node in sem:
        if aten_name(node.target) != "bmm":
            continue
        try:
            m = _match_attention(graph, node, sem_index, by_name, consumers, outputs, constants)
        except (KeyError, IndexError, TypeError, ValueError, AttributeError, UnsupportedOpError):
            m = None  # not an attention pattern this matcher understands: the greedy regions take it
        if m is not None and not any(set(m.nodes) & set(f.nodes) for f in found):
            found.append(m)
    return found


def _match_attention(graph, bmm2, sem_index, by_name, consumers, outputs, constants) -> AttentionMatch | None:
    def node_of(v):
        return by_name.get(v)

    def is_relabel(n):
        return n is not None and n.target != "getitem" and \
            (op_kind(n.target) in TRANSPARENT_KINDS or is_alias(n, graph))

    def back(v, path):
        """Follow relabels back to the value they relabel; ``path`` collects them."""
        while is_relabel(node_of(v)):
            path.append(v)
            v = node_of(v).refs()[0].name
        return v

    def exclusive(values, inside):
        """Every consumer of ``values`` is in ``inside``; none is a graph output."""
        for v in values:
            if v in outputs or not consumers.get(v, set()) <= inside:
                return False
        return True

    def gqa(v, path):
        """(source, group): an expand of an unsqueezed [.., 1, S, D] to [.., G, S, D] shares K/V heads."""
        n = node_of(v)
        if n is None or aten_name(n.target) != "expand" or is_noop_expand(n, graph):
            return v, 1, None
        src_shape = graph.spec(n.args[0]).shape
        out_shape = n.outs[0].shape
        if len(src_shape) != len(out_shape) or len(out_shape) < 3 or src_shape[-3] != 1 or \
                tuple(src_shape[:-3]) + tuple(src_shape[-2:]) != tuple(out_shape[:-3]) + tuple(out_shape[-2:]):
            raise UnsupportedOpError("not a K/V head expansion")
        return back(n.args[0].name, path), out_shape[-3], n

    if len(bmm2.args) != 2 or not all(isinstance(a, Ref) for a in bmm2.args):
        return None
    chain: list[str] = []       # relabels and values that only the region may read
    nodes: list[AtenNode] = [bmm2]
    p = back(bmm2.args[0].name, chain)
    soft = node_of(p)
    if soft is None or aten_name(soft.target) != "_softmax" or not on_last_dim(soft, graph, soft.args[1]) or \
            (len(soft.args) > 2 and soft.args[2]):
        return None
    chain.append(soft.name)
    nodes.append(soft)
    ops: list[tuple] = []
    path: list[str] = []
    x = back(soft.args[0].name, path)
    while True:
        n = node_of(x)
        base = aten_name(n.target) if n is not None else ""
        if n is None or n.name in constants or tuple(n.outs[0].shape) != tuple(graph.spec(soft.args[0]).shape):
            break
        if base in ("mul", "div") and len(n.args) == 2 and isinstance(n.args[0], Ref) and \
                isinstance(n.args[1], (int, float)) and not isinstance(n.args[1], bool):
            c = float(n.args[1])
            ops.append(("scale", c if base == "mul" else 1.0 / c))
        elif base == "where" and len(n.args) == 3 and isinstance(n.args[0], Ref) and \
                n.args[0].name in constants and isinstance(n.args[2], Ref) and n.args[2].name not in constants \
                and graph.spec(n.args[0]).dtype == "bool":
            fill = n.args[1]
            if isinstance(fill, Ref):
                fnode = node_of(fill.name)
                if fnode is None or aten_name(fnode.target) != "scalar_tensor":
                    return None
                fill = fnode.args[0]
            if not isinstance(fill, (int, float)):
                return None
            ops.append(("fill", n.args[0].name, float(fill)))
        elif base == "add" and len(n.args) == 2 and all(isinstance(a, Ref) for a in n.args) and \
                sum(a.name in constants for a in n.args) == 1 and n.kwargs.get("alpha", 1) == 1:
            mask = next(a.name for a in n.args if a.name in constants)
            if graph.spec(mask).dtype not in ("f32", "bf16", "f16"):
                return None
            ops.append(("bias", mask))
        else:
            break
        chain.extend(path)
        path = []
        chain.append(n.name)
        nodes.append(n)
        data = [a for a in n.refs() if a.name not in constants]
        x = back(data[0].name, path)
    ops.reverse()
    scores_shape = tuple(graph.spec(soft.args[0]).shape)
    Sq, Sk = scores_shape[-2], scores_shape[-1]
    for op in ops:
        if op[0] in ("fill", "bias"):
            ms = tuple(graph.spec(op[1]).shape)
            if len(ms) < 2 or tuple(ms[-2:]) != (Sq, Sk) or any(d != 1 for d in ms[:-2]):
                return None  # only a mask shared by every batch and head
    first = node_of(x)
    mode, q, k, s, group_k = "scores", None, None, x, 1
    if first is not None and aten_name(first.target) == "bmm" and len(first.args) == 2:
        kpath: list[str] = []
        qv = back(first.args[0].name, [])
        kt = back(first.args[1].name, kpath)
        pn = node_of(kt)
        if pn is not None and aten_name(pn.target) in ("permute", "transpose", "t"):
            rank = len(pn.outs[0].shape)
            if aten_name(pn.target) == "permute":
                dims = [d % rank for d in pn.args[1]]
                ok = dims == list(range(rank - 2)) + [rank - 1, rank - 2]
            elif aten_name(pn.target) == "transpose":
                ok = sorted(d % rank for d in pn.args[1:3]) == [rank - 2, rank - 1]
            else:
                ok = rank == 2
            if ok and rank >= 3:
                mode, q, s = "qk", qv, None
                chain.extend(path)
                chain.append(first.name)
                nodes.append(first)
                kpath2: list[str] = []
                k, group_k, kexp = gqa(back(pn.args[0].name, kpath2), kpath2)
                # the permute (and a head expansion) are the region's when nothing else reads them
                inside_k = {pn.name} | set(kpath) | set(kpath2) | {first.name}
                if exclusive([pn.name] + kpath, set(kpath) | {first.name}):
                    nodes.append(pn)
                    if kexp is not None and exclusive([kexp.name] + kpath2, inside_k | {kexp.name}):
                        nodes.append(kexp)
    vpath: list[str] = []
    v, group_v, vexp = gqa(back(bmm2.args[1].name, vpath), vpath)
    if vexp is not None and exclusive([vexp.name] + vpath, set(vpath) | {vexp.name, bmm2.name}):
        nodes.append(vexp)
    inside = {n.name for n in nodes} | set(chain)
    if not exclusive(chain, inside):
        return None
    vs = tuple(graph.spec(v).shape)
    Dv = vs[-1]
    if tuple(bmm2.outs[0].shape)[-2:] != (Sq, Dv) or vs[-2] != Sk:
        return None
    BHq = math.prod(bmm2.outs[0].shape[:-2])
    if mode == "qk":
        qs, ks = tuple(graph.spec(q).shape), tuple(graph.spec(k).shape)
        if len(qs) < 3 or len(ks) < 3 or qs[-2] != Sq or ks[-2] != Sk or qs[-1] != ks[-1] or \
                math.prod(qs[:-2]) != BHq:
            return None
        D = qs[-1]
        if group_k != group_v or math.prod(ks[:-2]) * group_k != BHq or math.prod(vs[:-2]) * group_v != BHq:
            return None
    else:
        ss = tuple(graph.spec(s).shape)
        if len(ss) < 3 or ss[-2:] != (Sq, Sk) or math.prod(ss[:-2]) != BHq or \
                math.prod(vs[:-2]) != BHq or group_v != 1:
            return None
        D = 0
    dts = {asp_dtype(graph.spec(x_)) for x_ in ([q, k] if mode == "qk" else [s]) + [v]} | {asp_dtype(bmm2.outs[0])}
    if len(dts) != 1 or dts - {"f32", "bf16", "f16"}:
        return None
    if any(n.name not in sem_index for n in nodes):
        return None
    return AttentionMatch(sorted(sem_index[n.name] for n in nodes), mode, q, k, s, v, group_v, ops, bmm2,
                      (BHq // group_v, Sq, Sk, D, Dv))


M_FLOOR = -1e30   # the online softmax's initial running max (finite: see AttentionKernel)


class AttentionKernel(RegionCode):
    """softmax(scale * Q K^T [masked]) V as one streaming kernel (flash attention): per (K/V head,
    query block) the K/V blocks, held on chip, stream past an online-softmax ``accum`` of the
    running max m, sum l and output acc; the scores never reach HBM."""

    def build(self) -> OpKernel:
        g = self.g
        att = self.whole_match(attention_matches(g), "attention pattern")
        BH, Sq, Sk, D, Dv = att.dims
        G = att.group
        p = self.region.params
        bq = divisor_at_most(Sq, int(p.get("tm", 128)))    # query rows per block
        bk = divisor_at_most(Sk, int(p.get("tk", 128)))    # keys per block
        par, par_m, par_b = int(p.get("par", 128)), int(p.get("par_mem", 4)), int(p.get("par_buf", 8))
        kv_buf = bool(p.get("kv_buf", 1))
        dt = asp_dtype(att.out.outs[0])
        kb = KernelBuilder(f"fused_{self.ri}_attention")
        sizes = {"BH": BH, "SQ": G * Sq, "SK": Sk, "DV": Dv, "BQ": bq, "BK": bk}
        if att.mode == "qk":
            sizes["D"] = D
        if G > 1:
            sizes["SM"] = Sq
        kb.fns.append("  sizes " + ", ".join(f"{k} = {v}" for k, v in sizes.items()))
        inputs, views, streams, params = [], [], [], []

        def kv(name: str, dcol: str, augment: str | None = None) -> str:
            pn = kb.param(dt, ("BH", "SK", dcol))
            inputs.append(name)
            views.append((BH, Sk, D if dcol == "D" else Dv))
            if kv_buf:
                (s,) = kb.op(f"load({pn}, tile=[1, BK, {dcol}], par={par_m})")
                if augment:
                    (s,) = kb.op(f"map({s}, fn={augment}, par={min(4, par)})")
                (b,) = kb.op(f"bufferize({s}, rank=1, par={par_b})")
                (r,) = kb.op(f"streamify({b}, repeat=SQ / BQ, par={par_b})")
            else:  # re-read from HBM for every query block
                (r,) = kb.op(f"load({pn}, tile=[1, BK, {dcol}], repeat=SQ / BQ, at=1, par={par_m})")
                if augment:
                    (r,) = kb.op(f"map({r}, fn={augment}, par={min(16, par)})")
            return r

        if att.mode == "qk":
            pq = kb.param(dt, ("BH", "SQ", "D"))
            inputs.append(att.q)
            views.append((BH, G * Sq, D))
            (qs,) = kb.op(f"load({pq}, tile=[1, BQ, D], par={par_m})")
            (qr,) = kb.op(f"repeat({qs}, SK / BK)")
            streams += [qr, kv(att.k, "D")]
            params += ["qt", "kt"]
            s = "matmul(qt, transpose(kt))"
        else:
            ps = kb.param(dt, ("BH", "SQ", "SK"))
            inputs.append(att.s)
            views.append((BH, G * Sq, Sk))
            (ss,) = kb.op(f"load({ps}, tile=[1, BQ, BK], par={par_m})")
            streams.append(ss)
            params.append("st")
            s = "st"
        # V gets a column of ones: the product P V then carries the softmax denominator sum(P) in its
        # last column, and the accumulator is (m, acc) only (fewer operations per step: fewer PCUs a copy)
        aug = kb.fn(["vt"], f"concat(vt, ones([BK, 1]{'' if dt == 'f32' else f', dtype={dt}'}), axis=1)")
        streams.append(kv(att.v, "DV", aug))
        params.append("vt")
        self.lets = []
        cur = self.let(s if dt == "f32" else f"cast({s}, f32)", "s")
        for op in att.ops:
            if op[0] == "scale":
                cur = self.let(f"{cur} * {asp_literal(op[1])}", "s")
                continue
            mspec = g.spec(op[1])
            pm = kb.param(asp_dtype(mspec), ("SM" if G > 1 else "SQ", "SK"))
            inputs.append(op[1])
            views.append((Sq, Sk))
            heads = f"BH * {G}" if G > 1 else "BH"
            if kv_buf:  # loaded once into an on-chip buffer, re-read for every head
                (ms,) = kb.op(f"load({pm}, tile=[BQ, BK], par={par_m})")
                (mb,) = kb.op(f"bufferize({ms}, rank=2, par={par_b})")
                (mr,) = kb.op(f"streamify({mb}, repeat={heads}, par={par_b})")
            else:  # re-read from HBM for every head (where the buffer does not fit)
                (mr,) = kb.op(f"load({pm}, tile=[BQ, BK], repeat={heads}, at=0, par={par_m})")
            if G > 1:  # [BH * G, Sq/BQ, Sk/BK] -> [BH, G * Sq/BQ, Sk/BK]: query rows of G heads per K/V head
                (mf,) = kb.op(f"flatten({mr}, dims=[0, 1])")
                (mr,) = kb.op(f"reshape({mf}, dim=0, chunk=SQ / BQ)")
            streams.append(mr)
            mt = f"mt{len(params)}"
            params.append(mt)
            if op[0] == "fill":
                cur = self.let(f"where({mt}, {asp_literal(op[2])}, {cur})", "s")
            else:
                cur = self.let(f"{cur} + {mt if asp_dtype(mspec) == 'f32' else f'cast({mt}, f32)'}", "s")
        # m starts at a finite floor, not -inf: a row whose blocks so far are all masked (max -inf) keeps
        # m = floor and gets p = exp(-inf) = 0, c = 1, never exp(-inf - -inf) = NaN; a row masked whole
        # ends with 0 / 0 = NaN, as softmax gives
        m2 = self.let(f"maximum(m, max({cur}, axis=1))", "m")
        pe = self.let(f"exp({cur} - {m2})", "p")
        c = self.let(f"exp(m - {m2})", "c")
        pv = f"matmul({pe}, vt)" if dt == "f32" else f"cast(matmul(cast({pe}, {dt}), vt), f32)"
        step = kb.fn(["m", "acc"] + params, f"({m2}, acc * {c} + {pv})", self.lets)
        ratio = "slice(acc, axis=1, stop=DV) / slice(acc, axis=1, start=DV)"
        fin = kb.fn(["acc"], ratio if dt == "f32" else f"cast({ratio}, {dt})")
        kb.n += 1
        acc = f"acc{kb.n}"
        kb.body.append(f"  _, {acc} = accum({', '.join(streams)}, rank=1, init=(full([BQ, 1], {asp_literal(M_FLOOR)}), "
                       f"zeros([BQ, DV + 1])), fn={step}, par={par})")
        (os_,) = kb.op(f"map({acc}, fn={fin}, par={min(16, par)})")
        oname = kb.result(dt, ("BH", "SQ", "DV"))
        kb.do(f"store({oname}, {os_}, par={par_m})")
        comment = "fused attention region (online softmax): " + ", ".join(n.target for n in self.nodes)
        return OpKernel(att.out.name, "fused.attention", kb.text(comment), inputs, views, [att.out.name],
                        [(BH, G * Sq, Dv)])


TEMPLATE = Template("attention", ATTN_GRID, built_by(AttentionKernel), min_tries=ATTN_MIN_TRIES, whole_grid=True)
