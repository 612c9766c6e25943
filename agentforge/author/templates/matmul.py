"""The matmul template: C = A @ B (+ bias) in TM x TN tiles accumulated over K, the weight read
transposed in place where the graph transposes it, then an elementwise epilogue on the output
tiles; several matmuls of one activation (q/k/v, SwiGLU's gate and up) share one read of A."""

from __future__ import annotations

import math

from ...capture import AtenNode, Ref
from ...lowering import (MM_TILE, KernelBuilder, OpKernel, UnsupportedOpError, asp_dtype, asp_list, asp_literal,
                         aten_name, cast_expr, divisor_at_most, elementwise_kind, elementwise_parts, kernel_name)
from ..graph import row_view, swaps_last_two
from .base import RegionCode, Template, built_by

# matmul: output tile (tm x tn, its f32 accumulator in one PMU up to 512 x 256), reduction step, accum
# copies, A's row block held on chip and re-streamed per column block (hold=1, banked over par_buf PMUs),
# all of B held too (hold=2) or both re-read from HBM (hold=0), memory and epilogue parallelism. Each key's first value is where the
# search starts (a large square GEMM's best neighbourhood); the grid is searched by coordinate descent
MM_GRID = {"tm": (256, 512, 128, 64), "tn": (256, 512, 128, 64), "tk": (128, 256, 64),
           "par": (1000, 1024, 960, 896, 768, 640, 512, 256, 64), "hold": (1, 2, 0), "par_buf": (16, 32, 64),
           "par_mem": (8, 16), "par_epi": (16, 64)}
MM_MIN_TRIES = 80  # about three rounds of coordinate descent: a matmul region is most of a layer's time


def mm_parts(mm: AtenNode):
    """(bias, a, b, alpha, beta) of an mm / addmm / bmm node."""
    if aten_name(mm.target) == "addmm":
        return mm.args[0], mm.args[1], mm.args[2], mm.kwargs.get("alpha", 1), mm.kwargs.get("beta", 1)
    return None, mm.args[0], mm.args[1], 1, 1


class MatmulKernel(RegionCode):
    """C = A @ B (+ bias) in TM x TN tiles accumulated over K, then an elementwise epilogue."""

    def build(self) -> OpKernel:
        g = self.g
        mms = [n for n in self.nodes if aten_name(n.target) in ("mm", "addmm", "bmm")]
        mm = mms[0]
        base = aten_name(mm.target)
        parts = [mm_parts(n) for n in mms]
        bias, a, b, alpha, beta = parts[0]
        sa, sb, out = g.spec(a), g.spec(b), mm.outs[0]
        # a batched matmul (bmm) runs the same tiles with a leading batch axis of tile 1
        bt = sa.shape[0] if base == "bmm" else None
        lead = [1] if bt is not None else []
        off = 1 if bt is not None and bt > 1 else 0   # the batch axis is a stream dimension when > 1
        M, K = sa.shape[-2:]
        N = sb.shape[-1]
        dt = asp_dtype(out)
        # several matmuls of one activation (q/k/v, SwiGLU's gate and up): A is read once and copied
        # to one accum per weight; the epilogue sees all their tiles (silu(gate) * up in one map)
        for n, (_, a2, b2, _, _) in zip(mms[1:], parts[1:]):
            if aten_name(n.target) == "bmm" or base == "bmm" or self.resolve(a2.name) != self.resolve(a.name) or \
                    tuple(g.spec(b2).shape) != tuple(sb.shape) or asp_dtype(n.outs[0]) != dt:
                raise UnsupportedOpError("matmuls of one region must share their activation and shapes")
        weights_t = {self.resolve(b_.name) for (_, _, b_, _, _) in parts}
        epilogue = [n for n in self.nodes[self.nodes.index(mm) + 1:] if n not in mms and n.name not in weights_t]
        if base == "bmm" and epilogue:
            raise UnsupportedOpError("a batched matmul region takes no epilogue")
        p = self.region.params
        tm = divisor_at_most(M, int(p.get("tm", MM_TILE)))
        tn = divisor_at_most(N, int(p.get("tn", MM_TILE)))
        tk = divisor_at_most(K, int(p.get("tk", MM_TILE)))
        par, par_m, par_e = int(p.get("par", 64)), int(p.get("par_mem", 4)), int(p.get("par_epi", 16))
        kb = KernelBuilder(f"fused_{self.ri}_{kernel_name(mm)[2:]}")
        inputs, views, streams, params = [], [], [], []
        batch = (bt,) if bt is not None else ()
        pa = kb.param(dt, batch + (M, K))
        inputs.append(a.name)
        views.append(batch + (M, K))
        m_kept, n_kept = tm < M, tn < N
        if n_kept and tk < K and int(p.get("hold", 0)):
            # operand reuse: each [tm, K] row block of A is read from HBM once, held on chip
            # (banked over par_buf PMUs) and streamed again for every column block of B; without
            # it A is re-read N / tn times and a large square GEMM is bound by HBM, not compute
            pbuf = int(p.get("par_buf", 16))
            (xa,) = kb.op(f"load({pa}, tile={asp_list(lead + [tm, tk])}, par={par_m})")
            (xa,) = kb.op(f"bufferize({xa}, rank=1, par={pbuf})")
            (xa,) = kb.op(f"streamify({xa}, repeat={N // tn}, par={pbuf})")
        else:
            call = f"load({pa}, tile={asp_list(lead + [tm, tk])}"
            if n_kept:
                call += f", repeat={N // tn}, at={off + (1 if m_kept else 0)}"
            (xa,) = kb.op(call + f", par={par_m})")
        xas = kb.op(f"copy({xa})", len(mms)) if len(mms) > 1 else [xa]
        cexprs = []
        for gi, (n, (_, _, b, alpha, _)) in enumerate(zip(mms, parts)):
            # a transposed weight (B = W^T, W: [N, K]; batched: B[b] = W[b]^T) is read in place,
            # transposing each tile
            b_src, trans = b.name, False
            src_node = next((x for x in g.nodes if x.name == self.resolve(b.name)), None)
            if src_node is not None and aten_name(src_node.target) in ("permute", "t", "transpose") and \
                    swaps_last_two(src_node, g):
                src_shape = tuple(g.spec(src_node.args[0]).shape)
                # [.., N, K] read in place as [batch, N, K] (a K cache [B, H, L, D] as [B * H, L, D])
                if src_shape[-2:] == (N, K) and math.prod(src_shape[:-2]) == (bt or 1) and \
                        (bt is not None or len(src_shape) == 2):
                    b_src, trans = src_node.args[0].name, True
            if trans:
                pb = kb.param(asp_dtype(g.spec(b_src)), batch + (N, K))
                inputs.append(b_src)
                views.append(batch + (N, K))
                call = f"load({pb}, tile={asp_list(lead + [tn, tk])}"
            else:
                pb = kb.param(dt, batch + (K, N))
                inputs.append(b.name)
                views.append(batch + (K, N))
                call = f"load({pb}, tile={asp_list(lead + [tk, tn])}"
                if tk < K and n_kept:
                    call += f", order={asp_list(([0] if off else []) + [off + 1, off])}"
            b_rank = int(n_kept) + int(tk < K)
            if m_kept and b_rank and int(p.get("hold", 0)) >= 2:
                # all of B (per batch) held on chip too and streamed again for every row block of A:
                # HBM moves A, B and C once whatever the tiles (small tiles keep a plan checkable)
                pbuf = int(p.get("par_buf", 16))
                (xb,) = kb.op(call + f", par={par_m})")
                (xb,) = kb.op(f"bufferize({xb}, rank={b_rank}, par={pbuf})")
                (xb,) = kb.op(f"streamify({xb}, repeat={M // tm}, par={pbuf})")
            else:
                if m_kept:
                    call += f", repeat={M // tm}, at={off}"
                (xb,) = kb.op(call + f", par={par_m})")
            yb = "transpose(y)" if trans else "y"
            prod = f"matmul(x, {yb})" if dt == "f32" else f"cast(matmul(x, {yb}), f32)"
            par_g = max(1, par // len(mms))   # the copies share the region's PCUs
            if tk < K:
                mac = kb.fn(["acc", "x", "y"], f"acc + {prod}")
                (c,) = kb.op(f"accum({xas[gi]}, {xb}, rank=1, init=zeros({asp_list([tm, tn])}), fn={mac}, par={par_g})")
            else:
                f = kb.fn(["x", "y"], prod)
                (c,) = kb.op(f"map({xas[gi]}, {xb}, fn={f}, par={par_g})")
            streams.append(c)
            cname = "c" if len(mms) == 1 else f"c{gi}"
            params.append(cname)
            cexprs.append(cname if alpha == 1 else f"{cname} * {asp_literal(alpha)}")

        def operand(ref: Ref) -> str:
            name = self.resolve(ref.name)
            if name in self.expr:
                return self.expr[name]
            spec = g.spec(ref.name)
            shape = row_view(tuple(spec.shape))   # [.., S, N] operands as their [rows, N] view
            if shape[0] == M:
                pn_ = kb.param(asp_dtype(spec), (M, shape[1]))
                tile = [tm, tn if shape[1] == N else 1]
                (s,) = kb.op(f"load({pn_}, tile={asp_list(tile)}, par={par_m})")
                views.append((M, shape[1]))
            else:
                pn_ = kb.param(asp_dtype(spec), (1, shape[1]))
                tile = [1, tn if shape[1] == N else 1]
                c_ = f"load({pn_}, tile={asp_list(tile)}"
                if m_kept:
                    c_ += f", repeat={M // tm}, at=0"
                (s,) = kb.op(c_ + f", par={par_m})")
                views.append((1, shape[1]))
            if shape[1] != N and n_kept:
                (s,) = kb.op(f"repeat({s}, {N // tn})")
            streams.append(s)
            pn = f"e{len(params)}"
            params.append(pn)
            inputs.append(ref.name)
            self.expr[name] = pn
            return pn

        for n, (bias, _, _, _, beta), cexpr in zip(mms, parts, cexprs):
            if isinstance(bias, Ref):
                bv = operand(bias)
                bdt = asp_dtype(g.spec(bias))
                cexpr = f"{cexpr} + {bv if bdt == 'f32' else f'cast({bv}, f32)'}" + \
                    (f" * {asp_literal(beta)}" if beta != 1 else "")
            self.expr[n.name] = self.let(cast_expr(cexpr, "f32", dt))
        for node in epilogue:
            ops, fexpr, odt = elementwise_parts(node, g, elementwise_kind(aten_name(node.target)))
            xs = [operand(Ref(o.value)) if o.kind == "tensor" else asp_literal(o.value) for o in ops]
            self.expr[node.name] = self.let(fexpr(xs))
        results = [n.outs[0] for n in self.nodes if (n in mms or n in epilogue) and self.used_outside(n.outs[0].name)]
        names = [self.expr[o.name] for o in results]
        if len(results) == 1 and params == ["c"] and self.lets == [(names[0], "c")]:
            outs = [streams[0]]   # nothing to apply: the accumulator's tiles are stored as they are
        else:
            f = kb.fn(params, names[0] if len(names) == 1 else "(" + ", ".join(names) + ")", self.lets)
            outs = kb.op(f"map({', '.join(streams)}, fn={f}, par={par_e})", len(results))
        for s, o in zip(outs, results):
            oname = kb.result(asp_dtype(o), batch + (M, N))
            kb.do(f"store({oname}, {s}, par={par_m})")
        comment = "fused matmul region: " + ", ".join(n.target for n in self.nodes)
        return OpKernel(self.nodes[-1].name, "fused.matmul", kb.text(comment), inputs, views,
                        [o.name for o in results], [batch + (M, N)] * len(results))


TEMPLATE = Template("matmul", MM_GRID, built_by(MatmulKernel), min_tries=MM_MIN_TRIES)
