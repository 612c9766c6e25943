"""``asp``: check, format, run and profile ASP kernels on the emulated RDU.

Exit codes: 0 success, 1 ``fmt --check`` found a difference, 2 a user error (shown as
``file:line:col: error: ...``), 3 an internal error (a bug: reported in one line, never a
traceback).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import zipfile
from pathlib import Path

import numpy as np

from . import EMULATOR_VERSION, __version__
from .compiler import check
from .errors import AspError
from .interp import Limits, random_inputs, run
from .machine import load_machine, presets
from .printer import format_kernel
from .syntax import parse
from .event import MODELS, profile


class UsageError(Exception):
    """A bad command line or file: message for the user, exit 2."""


def parse_sizes(text: str | None) -> dict[str, int]:
    """``N=4096,M=128`` -> {"N": 4096, "M": 128}."""
    out: dict[str, int] = {}
    if not text:
        return out
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if "=" not in part:
            raise UsageError(f"--sizes: '{part}' should look like NAME=INT (e.g. --sizes N=4096,M=128)")
        k, v = (s.strip() for s in part.split("=", 1))
        if not k.isidentifier():
            raise UsageError(f"--sizes: '{k}' is not a size name")
        try:
            out[k] = int(v)
        except ValueError:
            shown = v if len(v) <= 40 else f"{v[:20]}...({len(v)} characters)"
            raise UsageError(f"--sizes: {k}={shown!r} is not an integer") from None
    return out


def parse_routing(text: str | None) -> dict:
    if not text or text == "uniform":
        return {}
    if text.startswith("counts="):
        try:
            return {"counts": [int(x) for x in text[len("counts="):].split(":")]}
        except ValueError:
            pass
    raise UsageError("--routing takes 'uniform' or 'counts=C0:C1:...' (elements per branch)")


def _read(path: str) -> str:
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{path}: no such file")
    try:
        return p.read_text()
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not a UTF-8 text file") from None


def _compile(args, need_machine: bool = True):
    src = _read(args.file)
    kernel = parse(src, args.file)
    machine = load_machine(args.machine)
    return check(kernel, machine, parse_sizes(getattr(args, "sizes", None)), args.file, src,
                 parse_routing(getattr(args, "routing", None)), getattr(args, "node", None))


def _declared_nbytes(z, key: str) -> int:
    """Bytes of one array of an .npz, read from its header before the data: a compressed file
    can expand to any size, so it is measured before it is loaded."""
    with z.zip.open(key + ".npy") as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(f)
    return math.prod(shape) * dtype.itemsize


def _load_inputs(path: str, limits: Limits | None = None) -> dict[str, np.ndarray]:
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"--inputs {path}: no such file")
    cap = (limits or Limits()).max_array_bytes
    try:
        z = np.load(p, allow_pickle=False, mmap_mode="r")
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise UsageError(f"--inputs {path}: a single array, not an .npz archive with one array per parameter")
        with z:
            for k in z.files:
                n = _declared_nbytes(z, k)
                if n > cap:
                    raise UsageError(f"--inputs {path}: array '{k}' is {n / 2**30:.1f} GiB, over the "
                                     f"{cap / 2**30:.1f} GiB cap on one array")
            return {k: z[k] for k in z.files}
    except (ValueError, OSError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise UsageError(f"--inputs {path}: not a readable .npz file ({e})") from None


def cmd_check(args) -> int:
    prog = _compile(args)
    info = {"kernel": prog.kernel.name, "ok": True, "sizes": prog.sizes, "operators": len(prog.nodes),
            "sections": len(prog.sections), "units": prog.units, "notes": prog.notes,
            "streams": {k: str(v) for k, v in prog.streams.items()}}
    sockets = getattr(prog, "programs", None)  # a kernel on several sockets: socket 0's program above
    if sockets:
        info["sockets"] = [{"socket": s, "operators": len(sp.nodes), "sections": len(sp.sections), "units": sp.units}
                           for s, sp in enumerate(sockets)]
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        where = f"socket 0 of {len(sockets)} x {prog.machine.name}" if sockets else prog.machine.name
        print(f"{args.file}: ok: kernel {prog.kernel.name}, {len(prog.nodes)} operators, "
              f"{prog.units['pcus']} PCUs, {prog.units['pmus']} PMUs on {where}")
        for n in prog.notes:
            print(f"note: {n}")
    return 0


def cmd_fmt(args) -> int:
    src = _read(args.file)
    out = format_kernel(parse(src, args.file))
    if args.check:
        if out != src:
            print(f"{args.file}: would reformat", file=sys.stderr)
            return 1
        return 0
    if args.write:
        if out != src:
            try:
                Path(args.file).write_text(out)
            except OSError as e:
                raise UsageError(f"{args.file}: cannot write ({e.strerror or e})") from None
        return 0
    sys.stdout.write(out)
    return 0


def _summary(a: np.ndarray) -> dict:
    a = np.asarray(a)
    finite = a[np.isfinite(a)] if a.dtype.kind == "f" else a
    return {"shape": list(a.shape), "dtype": str(a.dtype),
            "mean": float(finite.mean()) if finite.size else None,
            "abs_max": float(np.abs(finite).max()) if finite.size else None,
            "nonfinite": int((~np.isfinite(a)).sum()) if a.dtype.kind == "f" else 0,
            "head": np.asarray(a).ravel()[:6].tolist()}


def cmd_run(args) -> int:
    prog = _compile(args)
    if args.inputs and args.random_inputs:
        raise UsageError("give --inputs or --random-inputs, not both")
    inputs = _load_inputs(args.inputs) if args.inputs else random_inputs(prog, args.seed)
    outs = run(prog, inputs)
    if args.output:
        try:
            np.savez(args.output, **outs)
        except OSError as e:  # a bad path is the user's mistake, not an internal error
            raise UsageError(f"--output {args.output}: cannot write ({e.strerror or e})") from None
    report = {"kernel": prog.kernel.name, "machine": prog.machine.name, "sizes": prog.sizes,
              "inputs": "random (seed %d)" % args.seed if not args.inputs else args.inputs,
              "results": {k: _summary(v) for k, v in outs.items()}, "emulator": EMULATOR_VERSION}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for k, v in report["results"].items():
            print(f"{k}: {v['dtype']}{v['shape']} mean={v['mean']} abs_max={v['abs_max']} "
                  f"nonfinite={v['nonfinite']} head={[round(x, 5) for x in v['head']]}")
    return 0


def cmd_profile(args) -> int:
    prog = _compile(args)
    if not args.timing_only:
        run(prog, random_inputs(prog, args.seed))  # the numbers must exist before the time means anything
    rep = profile(prog, args.model)
    if args.json:
        print(json.dumps(rep.to_dict(), indent=2))
        return 0
    us = rep.seconds * 1e6
    print(f"{prog.kernel.name} on {rep.machine} at {rep.sizes} ({'timing only' if args.timing_only else 'ran'})")
    print(f"  time        {rep.cycles:,.0f} cycles = {us:,.3f} us   ({rep.sections} section(s))")
    print(f"  roofline    {rep.roofline_seconds * 1e6:,.3f} us ({rep.roofline_limit}-bound); "
          f"reached {rep.roofline_fraction:.1%}")
    print(f"  HBM         {rep.hbm_bytes / 2**20:,.2f} MiB at {rep.hbm_bandwidth_gbs:,.1f} GB/s "
          f"({rep.hbm_bandwidth_fraction:.1%} of peak); DDR {rep.ddr_bytes / 2**20:,.2f} MiB")
    print(f"  units       {rep.pcu_allocated} PCUs, {rep.pmu_allocated} PMUs, {rep.agcu_allocated} AGCUs; "
          f"SRAM {rep.sram_bytes / 2**20:,.2f} MiB; PCU busy {rep.pcu_utilisation:.1%}")
    print(f"  bottleneck  {rep.bottleneck}")
    for s in rep.sockets:  # a kernel on several sockets (docs/asp.md, "More than one socket")
        print(f"  socket {s['socket']:>2}   {s['cycles']:,.0f} cycles, bottleneck {s['bottleneck']}, "
              f"peer link {s['link_cycles']:,.0f} cycles")
    if rep.sockets:
        print("  operators of the slowest socket:")
    for o in rep.ops:
        print(f"    line {o.line:>3} {o.op:<10} {o.busy_cycles:>14,.0f} cycles  {o.limit:<8} par={o.par}")
    for n in rep.notes:
        print(f"  note: {n}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="asp", description="ASP kernels on an emulated RDU")
    ap.add_argument("--version", action="version", version=f"asp {__version__} ({EMULATOR_VERSION})")
    sub = ap.add_subparsers(dest="cmd", required=True)

    def common(p, sizes=True):
        p.add_argument("file", help="an .asp kernel file")
        p.add_argument("--machine", default="sn40l", help=f"preset ({', '.join(presets())}) or a TOML file")
        if sizes:
            p.add_argument("--sizes", help="size overrides, e.g. N=4096,M=128 (defaults: the kernel's sizes lines)")
            p.add_argument("--routing", help="for partition: 'uniform' (default) or 'counts=C0:C1:...'")
            p.add_argument("--node", help="for a kernel with a 'sockets' line: the node preset whose peer "
                                          "links join the sockets (default sn40l-node8's links)")
        p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("check", help="type-check a kernel and fit it onto the machine")
    common(p)
    p.set_defaults(func=cmd_check)
    p = sub.add_parser("fmt", help="print the kernel in canonical form")
    p.add_argument("file")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--check", action="store_true", help="exit 1 if the file is not formatted")
    g.add_argument("-w", "--write", action="store_true", help="rewrite the file in place")
    p.set_defaults(func=cmd_fmt)
    p = sub.add_parser("run", help="run a kernel in the interpreter")
    common(p)
    p.add_argument("--inputs", help=".npz file with one array per parameter")
    p.add_argument("--random-inputs", action="store_true", help="standard-normal inputs (the default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", help="write the results to this .npz file")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("profile", help="time a kernel with the emulator's timing model")
    common(p)
    p.add_argument("--timing-only", action="store_true", help="no data: time at any size without allocating")
    p.add_argument("--model", choices=sorted(MODELS), default="fast",
                   help="timing model: fast (analytic, the default) or event (discrete-event simulation)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_profile)
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    try:
        code = args.func(args)
        sys.stdout.flush()  # a closed pipe shows up here, not at interpreter exit
        return code
    except AspError as e:
        print(e.render(), file=sys.stderr)
        return 2
    except UsageError as e:
        print(f"asp: error: {e}", file=sys.stderr)
        return 2
    except MemoryError:
        print("asp: error: out of memory; run at smaller sizes or use profile --timing-only", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. `asp profile --json k.asp | head -1`
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 0
    except Exception as e:  # a bug in asp itself: one line, not a traceback
        print(f"asp: internal error: {type(e).__name__}: {e} (please report this with the kernel file)",
              file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
