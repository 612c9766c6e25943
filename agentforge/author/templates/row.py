"""The row template: elementwise ops, reductions (vector norms among them), softmax, layer norm,
cumsum, slices, topk, gather / scatter and concatenation along the last dimension over one space
of rows, as one map over row tiles whose tile function holds the whole region. 1-d values of one
element per row (class targets, per-row losses) are columns [rows, 1] of the region. It may end
in split reductions across rows (each tile reduces to a partial in the map, a small ``accum`` per
reduction combines them, elementwise ops on the totals follow): a cross-entropy over class
indices is one region (log-softmax, the target's gather, the loss sum and the count of valid rows).

Losses, scans and norms are row ops, so they live here rather than in templates of their own: one
place decides how a row region loads, tiles and reduces, whatever ops it holds.

One cohesive kernel builder (about 320 lines): the ops a row region may hold are cases of one
loop over the region's nodes, sharing the operand loading and the tile size.
"""

from __future__ import annotations

import math

from ...capture import Ref, TensorSpec
from ...lowering import (TILE_CAP, KernelBuilder, OpKernel, UnsupportedOpError, asp_dtype, asp_list, asp_literal,
                         aten_name, cast_expr, divisor_at_most, elementwise_kind, elementwise_parts, kernel_name)
from ..graph import AtenNode, RelabelWalk, interleaves, row_kind, row_period, row_view, total_kind
from .base import RegionCode, Template, built_by

ROW_GRID = {"rows": (1, 4, 16, 64), "par": (16, 64, 256), "par_mem": (4, 16)}


def _reduce_expr(node: AtenNode, x: str, xdt: str, odt: str, cols: int) -> str:
    base = aten_name(node.target)
    cdt = "f32" if xdt in ("bf16", "f16") else xdt
    if base in ("sum", "mean") and xdt != odt and odt not in ("bf16", "f16"):
        cdt = odt
    xin = x if cdt == xdt else f"cast({x}, {cdt})"
    if base == "sum":
        return cast_expr(f"sum({xin}, axis=1)", cdt, odt)
    if base == "mean":
        return cast_expr(f"mean({xin}, axis=1)", cdt, odt)
    if base in ("amax", "amin"):
        return cast_expr(f"{'max' if base == 'amax' else 'min'}({xin}, axis=1)", cdt, odt)
    if base in ("argmax", "argmin"):
        return f"{base}({xin}, axis=1)"
    if base == "linalg_vector_norm":   # row_kind admits ord 2, 1 and inf
        ord_ = node.args[1] if len(node.args) > 1 else node.kwargs.get("ord", 2)
        if ord_ == 2:
            return cast_expr(f"sqrt(sum({xin} * {xin}, axis=1))", cdt, odt)
        return cast_expr(f"{'sum' if ord_ == 1 else 'max'}(abs({xin}), axis=1)", cdt, odt)
    corr = node.kwargs.get("correction", 1)
    corr = 1 if corr is None else corr
    return cast_expr(f"sum(({xin} - mean({xin}, axis=1)) * ({xin} - mean({xin}, axis=1)), axis=1) / "
                f"{asp_literal(float(cols - corr))}", cdt, odt)


def _column(shape, rows: int) -> bool:
    """A 1-d value of one element per row (a per-row loss, a class index): a column [rows, 1] of
    the region (the partitioner lets such values into a region only as columns)."""
    return rows > 1 and len(shape) == 1 and shape[0] == rows


PERIODIC_BUFFER_CAP = 16 << 20   # bytes of a row-periodic operand held on chip rather than re-read


class RowKernel(RegionCode):
    """One map over tiles of R rows; the tile function computes the whole region."""

    def build(self) -> OpKernel:
        g = self.g
        first = self.nodes[0]
        rows = row_view(first.outs[0].shape)[0]
        cols = [row_view(o.shape)[1] for n in self.nodes for o in n.outs if o.dtype != "none"]
        widest = max(cols + [1 if _column(g.spec(r.name).shape, rows) else row_view(g.spec(r.name).shape)[1]
                             for n in self.nodes for r in n.refs() if self.resolve(r.name) not in self.inside])
        base_rows = rows
        for n in self.nodes:   # row tiles must not straddle the period of an operand that repeats its rows
            if row_kind(n, g) in ("elementwise", "expand"):
                for r in n.refs():
                    if self.resolve(r.name) not in self.inside:
                        sp = tuple(g.spec(r.name).shape)
                        period = row_period((1,) * (len(n.outs[0].shape) - len(sp)) + sp, n.outs[0].shape)
                        if period is not None:
                            base_rows = math.gcd(base_rows, period)
        r_tile = divisor_at_most(base_rows, max(1, min(self.region.params.get("rows", TILE_CAP), TILE_CAP // widest)))
        par_c = int(self.region.params.get("par", 16))
        par_m = int(self.region.params.get("par_mem", 4))
        kb = KernelBuilder(f"fused_{self.ri}_{kernel_name(first)[2:]}")
        streams, params, inputs, views = [], [], [], []

        def operand(ref: Ref, out_shape) -> str:
            name = self.resolve(ref.name)
            if name in self.expr:
                return self.expr[name]
            spec = g.spec(ref.name)
            if out_shape is None:   # read as rows of the region, whatever its shape: [rows, numel / rows]
                out_shape = (rows, math.prod(spec.shape) // rows)
                spec = TensorSpec(spec.name, out_shape, spec.dtype)
            elif _column(out_shape, rows):   # an operand of a column op: a column [rows] or a scalar
                if math.prod(spec.shape) not in (1, rows):
                    raise UnsupportedOpError(f"plan does not fit this graph: '{ref.name}' {list(spec.shape)} is "
                                             f"neither a column of {rows} rows nor a scalar")
                out_shape = (rows, 1)
                spec = TensorSpec(spec.name, (rows, 1) if math.prod(spec.shape) == rows else (1, 1), spec.dtype)
            p = (1,) * (len(out_shape) - len(spec.shape)) + tuple(spec.shape) if out_shape else tuple(spec.shape)
            lead_full = tuple(p[:-1]) == tuple(out_shape[:-1]) if out_shape else False
            c = p[-1] if p else 1
            period = row_period(p, out_shape) if out_shape and not lead_full else None
            if period is not None and rows % period == 0 and period % r_tile == 0:
                pname = kb.param(asp_dtype(spec), (period, c))
                tile = asp_list([r_tile, c])
                if period == r_tile:   # one tile: re-emit it for every row tile
                    (s,) = kb.op(f"load({pname}, tile={tile}, par={par_m})")
                    (s,) = kb.op(f"repeat({s}, {rows // r_tile})")
                elif period * c * 4 <= PERIODIC_BUFFER_CAP:   # held on chip, re-read for each period
                    (s,) = kb.op(f"load({pname}, tile={tile}, par={par_m})")
                    (b,) = kb.op(f"bufferize({s}, rank=1, par=16)")
                    (s,) = kb.op(f"streamify({b}, repeat={rows // period}, par=16)")
                    (s,) = kb.op(f"flatten({s}, dims=[0, 1])")
                else:   # re-read from HBM for each period
                    (s,) = kb.op(f"load({pname}, tile={tile}, repeat={rows // period}, at=0, par={par_m})")
                    (s,) = kb.op(f"flatten({s}, dims=[0, 1])")
                streams.append(s)
                pn = f"x{len(params)}"
                params.append(pn)
                inputs.append(ref.name)
                views.append((period, c))
                self.expr[name] = pn
                self.expr[ref.name] = pn
                return pn
            if not lead_full and any(d != 1 for d in p[:-1]):
                raise UnsupportedOpError(f"plan does not fit this graph: '{ref.name}' {list(spec.shape)} is neither "
                                         f"a full-row nor a broadcast operand of a row region over {rows} rows")
            pname = kb.param(asp_dtype(spec), (rows, c) if lead_full else (1, c))
            if lead_full:
                (s,) = kb.op(f"load({pname}, tile={asp_list([r_tile, c])}, par={par_m})")
            else:
                (s,) = kb.op(f"load({pname}, tile={asp_list([1, c])})")
                if rows // r_tile > 1:
                    (s,) = kb.op(f"repeat({s}, {rows // r_tile})")
            streams.append(s)
            pn = f"x{len(params)}"
            params.append(pn)
            inputs.append(ref.name)
            views.append((rows, c) if lead_full else (1, c))
            self.expr[name] = pn
            self.expr[ref.name] = pn
            return pn

        # the split reductions: (node, partial, combine, dtype, width, name of its combined total)
        totals: list[tuple] = []
        row_lets: list = []       # the map over row tiles
        fin_lets: list = []       # the second stage, on the combined totals
        after: set[str] = set()   # values of the second stage: the reductions' results and what follows them
        for node in self.nodes:
            kind = row_kind(node, g)
            out = node.outs[0]
            if totals and kind == "elementwise" and node.refs() and \
                    all(self.resolve(r.name) in after for r in node.refs()):
                self.lets = fin_lets   # elementwise ops on the (combined) totals only
                ops, fexpr, _ = elementwise_parts(node, g, elementwise_kind(aten_name(node.target)))
                self.expr[node.name] = self.let(fexpr([self.expr[self.resolve(o.value)] if o.kind == "tensor"
                                                       else asp_literal(o.value) for o in ops]))
                after.update(o.name for o in node.outs)
                continue
            self.lets = row_lets
            if kind == "total":
                xs = g.spec(node.args[0])
                x = operand(node.args[0], xs.shape)
                base, xdt, odt = aten_name(node.target), asp_dtype(xs), asp_dtype(out)
                cdt = "f32" if xdt in ("bf16", "f16") else xdt
                if base in ("sum", "mean") and xdt != odt and odt not in ("bf16", "f16"):
                    cdt = odt  # e.g. counting bools in i32
                xin = x if cdt == xdt else f"cast({x}, {cdt})"
                red = {"sum": "sum", "mean": "sum", "amax": "max", "amin": "min"}[base]
                whole = total_kind(node, g) == "all"
                # stage 1, in the map over row tiles (in parallel): each tile's partial
                partial = self.let(f"{red}({red}({xin}, axis=1), axis=0)" if whole else f"{red}({xin}, axis=0)")
                width = 1 if whole else xs.shape[-1]
                tname = f"t{len(totals)}"
                totals.append((node, partial, red, cdt, width, tname))
                self.lets = fin_lets
                count = math.prod(xs.shape) if whole else math.prod(xs.shape[:-1])
                fin = cast_expr(tname if base != "mean" else f"{tname} / {asp_literal(float(count))}", cdt, odt)
                self.expr[node.name] = fin if fin == tname else self.let(fin)
                after.update(o.name for o in node.outs)
                continue
            if kind == "elementwise":
                ops, fexpr, odt = elementwise_parts(node, g, elementwise_kind(aten_name(node.target)))
                xs = [operand(Ref(o.value), out.shape) if o.kind == "tensor" else asp_literal(o.value) for o in ops]
                self.expr[node.name] = self.let(fexpr(xs))
            elif kind == "expand":
                x = operand(node.args[0], out.shape)
                self.expr[node.name] = self.let(f"broadcast({x}, {asp_list([r_tile, out.shape[-1]])})")
            elif kind == "reduce":
                x = operand(node.args[0], g.spec(node.args[0]).shape)
                xs = g.spec(node.args[0])
                self.expr[node.name] = self.let(_reduce_expr(node, x, asp_dtype(xs), asp_dtype(out), xs.shape[-1]))
            elif kind == "softmax":
                xs = g.spec(node.args[0])
                x = operand(node.args[0], xs.shape)
                xin = x if asp_dtype(xs) == "f32" else f"cast({x}, f32)"
                z = self.let(f"{xin} - max({xin}, axis=1)")
                if aten_name(node.target) == "_softmax":
                    e = self.let(f"exp({z})")
                    res = f"{e} / sum({e}, axis=1)"
                else:
                    res = f"{z} - log(sum(exp({z}), axis=1))"
                self.expr[node.name] = self.let(cast_expr(res, "f32", asp_dtype(out)))
            elif kind == "layer_norm":
                xs = g.spec(node.args[0])
                x = operand(node.args[0], xs.shape)
                xin = x if asp_dtype(xs) == "f32" else f"cast({x}, f32)"
                u = self.let(f"mean({xin}, axis=1)")
                d = self.let(f"{xin} - {u}")
                rs = self.let(f"rsqrt(mean({d} * {d}, axis=1) + {asp_literal(float(node.args[4] if len(node.args) > 4 else 1e-5))})")
                y = f"{d} * {rs}"
                for ref in node.args[2:4]:
                    if isinstance(ref, Ref):
                        w = operand(ref, xs.shape)
                        wdt = asp_dtype(g.spec(ref))
                        y = f"({y}) {'*' if ref is node.args[2] else '+'} {w if wdt == 'f32' else f'cast({w}, f32)'}"
                outs = node.outs
                self.expr[outs[0].name] = self.let(cast_expr(y, "f32", asp_dtype(outs[0])))
                self.expr[outs[1].name] = self.let(cast_expr(u, "f32", asp_dtype(outs[1])))
                self.expr[outs[2].name] = self.let(cast_expr(rs, "f32", asp_dtype(outs[2])))
            elif kind == "cumsum":
                xs = g.spec(node.args[0])
                x = operand(node.args[0], xs.shape)
                odt = asp_dtype(out)
                self.expr[node.name] = self.let(f"cumsum({x if asp_dtype(xs) == odt else f'cast({x}, {odt})'}, axis=1)")
            elif kind == "flip":
                x = operand(node.args[0], g.spec(node.args[0]).shape)
                self.expr[node.name] = self.let(f"flip({x}, axis=1)")
            elif kind == "slice":
                xs = g.spec(node.args[0])
                x = operand(node.args[0], xs.shape)
                n = xs.shape[-1]
                a = node.args
                start = a[2] if len(a) > 2 and a[2] is not None else 0
                end = a[3] if len(a) > 3 and a[3] is not None else n
                step = a[4] if len(a) > 4 else 1
                start = max(0, min(n, start + n if start < 0 else start))
                end = max(0, min(n, end + n if end < 0 else end))
                self.expr[node.name] = self.let(f"slice({x}, axis=1, start={start}, stop={end}, step={step})")
            elif kind == "cat" and interleaves(node, g, rows):
                a = out.shape[-2]
                parts = [f"reshape({self.expr[self.resolve(r.name)]}, shape={asp_list([r_tile, a, 1])})"
                         for r in node.args[0]]
                e = parts[0]
                for p in parts[1:]:
                    e = f"concat({e}, {p}, axis=2)"
                self.expr[node.name] = self.let(f"reshape({e}, shape={asp_list([r_tile, a * len(parts)])})")
            elif kind == "cat":
                parts = [operand(r, out.shape) for r in node.args[0]]
                e = parts[0]
                for p in parts[1:]:
                    e = f"concat({e}, {p}, axis=1)"
                self.expr[node.name] = self.let(e)
            elif kind == "select":
                xs = g.spec(node.args[0])
                x = operand(node.args[0], None)
                b = xs.shape[-1]
                self.expr[node.name] = self.let(f"slice({x}, axis=1, start={node.args[2] % b}, "
                                                f"stop={math.prod(xs.shape) // rows}, step={b})")
            elif kind == "gather":
                x = operand(node.args[0], g.spec(node.args[0]).shape)
                idx = operand(node.args[2], g.spec(node.args[2]).shape)
                self.expr[node.name] = self.let(f"take({x}, {idx}, axis=1)")
            elif kind == "topk":
                xs = g.spec(node.args[0])
                x = operand(node.args[0], xs.shape)
                k = node.args[1]
                largest = node.args[3] if len(node.args) > 3 else True
                if largest:
                    self.expr[node.outs[0].name] = self.let(f"topk({x}, k={k}, axis=1)")
                else:
                    self.expr[node.outs[0].name] = self.let(f"-topk(-{x}, k={k}, axis=1)")
                self.expr[node.outs[1].name] = self.let(f"argtopk({x if largest else '-' + x}, k={k}, axis=1)")
            elif kind == "scatter":
                xs = g.spec(node.args[0])
                odt = asp_dtype(out)
                if RelabelWalk(g).is_zero(node.args[0]):  # scattering into zeros: no need to read them
                    base = f"zeros({asp_list([r_tile, xs.shape[-1]])}" + (f", dtype={odt})" if odt != "f32" else ")")
                else:
                    base = operand(node.args[0], xs.shape)
                idx = operand(node.args[2], g.spec(node.args[2]).shape)
                src = node.args[3] if len(node.args) > 3 else node.kwargs.get("src", node.kwargs.get("value"))
                if isinstance(src, Ref):
                    sv = operand(src, g.spec(src).shape)
                    sv = sv if asp_dtype(g.spec(src)) == odt else f"cast({sv}, {odt})"
                else:
                    sv = asp_literal(src)
                self.expr[node.name] = self.let(f"put({base}, {idx}, {sv}, axis=1)")
            else:
                raise UnsupportedOpError(f"not supported in a row region: {node.target}")
        self.lets = row_lets
        results, finals = [], []
        for node in self.nodes:
            for o in node.outs:
                if o.dtype != "none" and self.used_outside(o.name) and o.name in self.expr:
                    (finals if o.name in after else results).append(o)
        if not results and not finals:
            raise UnsupportedOpError("a row region with no result used outside it")
        names = [self.expr[o.name] for o in results] + [t[1] for t in totals]
        f = kb.fn(params, names[0] if len(names) == 1 else "(" + ", ".join(names) + ")", self.lets)
        outs = kb.op(f"map({', '.join(streams)}, fn={f}, par={par_c})", len(names))
        out_views = []
        if totals:
            # stage 2: combine each reduction's tile partials (one small accumulator each), then what follows
            parts = []
            for (_, _, red, cdt, width, _), part in zip(totals, outs[len(results):]):
                if rows // r_tile > 1:
                    dt_ = "" if cdt == "f32" else f", dtype={cdt}"
                    init = f"zeros([1, {width}]{dt_})" if red == "sum" else \
                        f"full([1, {width}], {'-inf' if red == 'max' else 'inf'}{dt_})"
                    comb = kb.fn(["acc", "p"], {"sum": "acc + p", "max": "maximum(acc, p)",
                                                "min": "minimum(acc, p)"}[red])
                    (part,) = kb.op(f"accum({part}, rank=1, init={init}, fn={comb})")
                parts.append(part)
            fnames = [self.expr[o.name] for o in finals]
            tnames = [t[5] for t in totals]
            fouts = parts
            if fnames != tnames:
                fin = kb.fn(tnames, fnames[0] if len(fnames) == 1 else "(" + ", ".join(fnames) + ")", fin_lets)
                fouts = kb.op(f"map({', '.join(parts)}, fn={fin})", len(fnames))
        for s, o in zip(outs, results):
            view = (rows, math.prod(o.shape) // rows)
            oname = kb.result(asp_dtype(o), view)
            kb.do(f"store({oname}, {s}, par={par_m})")
            out_views.append(view)
        if totals:
            for s, o in zip(fouts, finals):
                view = (1, max(1, math.prod(o.shape)))
                kb.do(f"store({kb.result(asp_dtype(o), view)}, {s})")
                out_views.append(view)
        comment = "fused row region: " + ", ".join(n.target for n in self.nodes)
        return OpKernel(self.nodes[-1].name, "fused.row", kb.text(comment), inputs, views,
                        [o.name for o in results + finals], out_views)


TEMPLATE = Template("row", ROW_GRID, built_by(RowKernel))
