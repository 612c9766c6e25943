"""``agentforge``: evaluate kernels against tasks and run the op-by-op baseline.

Exit codes: 0 verified, 1 rejected (the reason is printed), 2 a user error (bad task, bad
file, an op the baseline cannot lower), 3 an internal error (a bug: one line, no traceback).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .command import run_command
from .errors import AgentforgeError


class UsageError(AgentforgeError):
    """A bad command line."""


def _task(path: str):
    from .tasks import load_task

    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{path}: no such task file (a task is a .py file in the KernelBench layout)")
    if p.suffix != ".py" and not _looks_like_python(p):
        kind = "an ASP kernel" if p.suffix == ".asp" else f"a {p.suffix} file" if p.suffix else "not Python"
        raise UsageError(f"{path}: not a task file ({kind})\n  how to fix: "
                         + ("the command is `agentforge eval TASK.py KERNEL.asp`, task first; " if p.suffix == ".asp"
                            else "")
                         + "a task is a Python .py file in the KernelBench layout, class Model(nn.Module) and "
                           "get_inputs() (docs/tasks.md; e.g. evals/suite/softmax.py)")
    return load_task(p)


def _looks_like_python(p: Path) -> bool:
    """Is a file without the .py suffix a task all the same (then load_task says to rename it)?
    Parsed only (ast), never run."""
    import ast

    try:
        tree = ast.parse(p.read_text(encoding="utf-8"))
    except (SyntaxError, ValueError, UnicodeDecodeError, OSError):
        return False
    return any(isinstance(n, ast.ClassDef) and n.name == "Model" for n in tree.body)


def _verify_config(args):
    from .verify import VerifyConfig

    return VerifyConfig(machine=args.machine, timeout_s=args.timeout, memory_mb=args.memory_mb)


def _print_eval(ev, as_json: bool, sockets: int = 1) -> None:
    if as_json:
        print(json.dumps(ev.to_dict(), indent=2))
        return
    status = "VERIFIED" if ev.verified else f"REJECTED ({ev.reason_code})"
    print(f"{ev.task}: {status}")
    rendered = (ev.error or {}).get("message") if (ev.reason or "").startswith("ERROR[") else None
    if not ev.verified and rendered:
        print(rendered)    # an ASP error as `asp` prints it (AspError.render): file:line:col, source line, caret
    elif not ev.verified:
        print(f"  reason: {ev.reason}")
    passed = sum(c.passed for c in ev.checks)
    print(f"  checks: {passed}/{len(ev.checks)} passed"
          + (f" ({', '.join(sorted({c.distribution for c in ev.checks}))} inputs)" if ev.checks else ""))
    if ev.simulated_seconds is not None:
        where = f"{sockets} sockets of {ev.machine}" if sockets > 1 else ev.machine
        print(f"  simulated {ev.simulated_seconds * 1e6:,.2f} us on {where} at {ev.own_sizes}; "
              f"baseline {ev.baseline_seconds * 1e6:,.2f} us; speedup {ev.speedup:.2f}x; "
              f"roofline {ev.roofline_fraction:.1%}; HBM {ev.hbm_bytes / 2**20:,.1f} MiB")
    for w in ev.warnings:
        print(f"  warning: {w}")


def cmd_eval(args) -> int:
    from .sandbox import Evaluator
    from .verify import evaluate

    task = _task(args.task)
    kp = Path(args.kernel)
    if not kp.is_file():
        raise UsageError(f"{args.kernel}: no such kernel file")
    try:
        source = kp.read_text()
    except UnicodeDecodeError:
        raise UsageError(f"{args.kernel}: not a UTF-8 text file") from None
    cand = {"kind": "kernel", "source": source, "filename": str(kp)}
    cfg = _verify_config(args)
    if args.in_process:
        ev = evaluate(task, cand, cfg)
    else:
        with Evaluator(cfg) as worker:
            ev = worker.evaluate(task.path, cand)
    if ev.reason_code == "task":  # the task itself is broken: a user error, not a rejected kernel
        raise UsageError(ev.reason or f"{task.path}: the task could not be run")
    _print_eval(ev, args.json)
    if ev.reason_code == "emulator_bug":
        return 3
    return 0 if ev.verified else 1


def cmd_baseline(args) -> int:
    import asp_lang

    from .baseline import build_baseline
    from .capture import capture_at
    from .lowering import UnsupportedOpError
    from .verify import evaluate

    task = _task(args.task)
    machine = asp_lang.load_machine(args.machine)
    try:
        graph = capture_at(task, meta=True)
        bl = build_baseline(graph, machine)
    except UnsupportedOpError as e:
        raise UsageError(f"{task.path}: {e}") from None
    ev = evaluate(task, {"kind": "baseline"}, _verify_config(args))
    if ev.reason_code == "unsupported":
        raise UsageError(f"{task.path}: {ev.reason}")
    timing = bl.time()
    kernels = [{"index": i, "node": k.node, "target": k.target, "file": f"{i:03d}_{k.node}.asp", **row}
               for i, (k, row) in enumerate(zip(bl.kernels, timing.kernels))]
    if args.output:
        out = Path(args.output)
        out.mkdir(parents=True, exist_ok=True)
        for k, row in zip(bl.kernels, kernels):
            (out / row["file"]).write_text(k.source)
        (out / "baseline.json").write_text(json.dumps({"evaluation": ev.to_dict(), "kernels": kernels}, indent=2))
    if args.json:
        print(json.dumps({"evaluation": ev.to_dict(), "kernels": kernels,
                          "reconfigurations": timing.reconfigurations}, indent=2))
    else:
        _print_eval(ev, False)
        print(f"  {len(kernels)} kernels, {timing.reconfigurations} reconfigurations:")
        for row in kernels:
            print(f"    {row['index']:3d} {row['target']:<32} {row['seconds'] * 1e6:12,.2f} us  "
                  f"{row['hbm_bytes'] / 2**20:10,.2f} MiB")
        if args.output:
            print(f"  kernels written to {args.output}/")
    return 0 if ev.verified else 1


def _write_solution(out: Path, res, task, machine) -> list[str]:
    """The best candidate as files: kernel.asp, or plan.json and the chain's kernels at own sizes
    (under kernels/), as its :class:`~agentforge.solution.Solution` writes them."""
    from .capture import capture_at

    out.mkdir(parents=True, exist_ok=True)
    written = []
    cand = res.best_candidate
    if cand is not None:
        sol = cand.solution(machine)
        files = sol.files(capture_at(task, meta=True))
        kdir, prefix = out, ""
        if sol.plan_record is not None:
            (out / "plan.json").write_text(json.dumps(sol.plan_record, indent=2))
            written.append("plan.json")
            kdir, prefix = out / "kernels", "kernels/"
            kdir.mkdir(exist_ok=True)
        for name, text in files.items():
            (kdir / name).write_text(text)
            written.append(prefix + name)
    (out / "evaluation.json").write_text(json.dumps(res.to_dict(), indent=2))
    written.append("evaluation.json")
    return written


def cmd_solve(args) -> int:
    import asp_lang

    from .loop import SolveConfig, offline_roles, solve, task_context

    task = _task(args.task)
    machine = asp_lang.load_machine(args.machine)
    if args.attempts < 1 or args.workers < 1:
        raise UsageError("--attempts and --workers must be at least 1")
    plan_cache = experience = None
    if args.plan_cache:
        from .store.plan_cache import PlanCache

        plan_cache = PlanCache(args.plan_cache)
    if args.experience:
        from .store.experience import ExperienceLibrary

        experience = ExperienceLibrary(args.experience)
    ctx = task_context(task, machine)
    if args.llm == "offline":
        priors = experience.priors(ctx.signature) if experience is not None else None
        planner, workers, reflector = offline_roles(args.workers, priors)
    else:
        planner, workers, reflector = _llm_roles(args, ctx)
    cfg = SolveConfig(max_attempts=args.attempts, workers=args.workers)
    evaluate_fn = None
    if args.llm != "offline" or args.isolate:
        from .sandbox import EvaluatorPool
        from .verify import VerifyConfig

        evaluator = EvaluatorPool(VerifyConfig(machine=machine.name, timeout_s=args.timeout, memory_mb=args.memory_mb),
                                  size=args.workers)   # the loop's workers evaluate in parallel

        def evaluate_fn(c: dict):
            return evaluator.evaluate(task.path, c, baseline_seconds=ctx.baseline_seconds)
    try:
        res = solve(task, planner, workers, reflector, machine, cfg, evaluate_fn, plan_cache, experience, ctx)
    finally:
        if evaluate_fn is not None:
            evaluator.close()
    written = _write_solution(Path(args.output), res, task, machine) if args.output and res.verified else []
    if args.json:
        print(json.dumps(res.to_dict(), indent=2))
    else:
        if res.best is not None:
            _print_eval(res.best, False, res.sockets)
        else:
            print(f"{task.name}: no candidate was evaluated")
        print(f"  attempts: {res.attempts}; plan cache hit: {res.plan_cache_hit}; LLM calls: {res.usage.calls}; "
              f"tokens: {res.usage.prompt_tokens + res.usage.completion_tokens}")
        for n in res.notes:
            print(f"  note: {n}")
        if written:
            print(f"  written to {args.output}/: {', '.join(written)}")
    return 0 if res.verified else 1


def cmd_cache(args) -> int:
    from .store.plan_cache import cache_clear, cache_stats

    if not Path(args.db).exists():
        raise UsageError(f"{args.db}: no plan cache there (it is created by `agentforge solve --plan-cache PATH`)")
    if args.action == "clear":
        n = cache_clear(args.db)
        print(f"{args.db}: removed {n} cached plan(s)")
        return 0
    st = cache_stats(args.db)
    if args.json:
        print(json.dumps(st, indent=2))
    else:
        for k, v in st.items():
            print(f"{k:>20}: {v}")
    return 0


def cmd_estimate(args) -> int:
    """Whole-model decode and prefill estimate on a node of sockets (docs/multisocket.md)."""
    from asp_lang.node import node_for

    from .estimate import estimate

    node = node_for(args.machine, args.sockets)
    r = estimate(args.model, node, args.sockets, batch=args.batch, prompt_tokens=args.prompt_tokens,
                 weight_dtype=args.weight_dtype, spec_accept=args.spec_accept, reconfig=args.reconfig,
                 pipeline=args.pipeline)
    if args.json:
        print(json.dumps(r, indent=2))
        return 0
    pl = r["per_layer"]
    print(f"{r['model']} ({r['params'] / 1e9:.3g} B params) on {r['sockets']} x {r['socket']} ({r['machine']}"
          + (f", {r['pipeline']} pipeline stages of {r['tensor_parallel']}" if r["pipeline"] > 1 else "") + "), "
          f"batch {r['batch']}, prompt {r['prompt_tokens']}, weights {r['weight_dtype']}, "
          f"spec-accept {r['spec_accept']:g}")
    print(f"  decode: {r['decode_tokens_per_s_per_user']:.1f} tokens/s per user (weights streamed at "
          f"{r['fraction_of_bound']:.0%} of the {r['weight_dtype']} weight-streaming bound, "
          f"{r['weight_streaming_bound_dtype']:.1f} tokens/s at one token per weight read"
          + (f"; bf16 bound {r['weight_streaming_bound_bf16']:.1f})" if r["weight_dtype"] != "bf16" else ")"))
    print(f"  time to first token: {r['ttft_seconds'] * 1e3:.2f} ms")
    print(f"  per layer: decode {pl['decode_s'] * 1e6:.1f} us (attention {pl['decode_attention_s'] * 1e6:.1f}, "
          f"mlp {pl['decode_mlp_s'] * 1e6:.1f}, all-reduce {pl['decode_all_reduce_s'] * 1e6:.1f}); "
          f"prefill {pl['prefill_s'] * 1e3:.3f} ms")
    if not r["hbm_fits"]:
        print(f"  weights + KV cache exceed a socket's HBM by {r['hbm_overflow_bytes_per_socket'] / 2**30:.1f} GiB: "
              f"that part is read from DDR")
    return 0


def cmd_campaign(args) -> int:
    from .campaign import load_config, run_campaign
    from .campaign.console import CampaignView

    if args.from_model:     # the model's own regions as a suite (agentforge/torch/from_model.py)
        from .torch.from_model import cmd_campaign_from_model

        return cmd_campaign_from_model(args)

    # --resume with the command first run: the run's fixed settings may be repeated, not changed
    expect = {"SUITE": args.suite, "--llm": args.llm, "--model": args.model, "--base-url": args.base_url,
              "--machine": args.machine, "--attempts": args.attempts, "--tasks": args.tasks} if args.resume else None
    flags = {"suite": args.suite, "llm": args.llm, "machine": args.machine, "out": args.out, "workers": args.workers,
             "executor": args.executor, "ray_address": args.ray_address, "budget": args.budget,
             "attempts_per_task": args.attempts, "tasks": args.tasks, "task_timeout_s": args.task_timeout}
    cfg = load_config(**flags)
    if args.model or args.base_url:
        table = dict(cfg.llm_config)
        table.update({k: v for k, v in (("model", args.model), ("base_url", args.base_url)) if v})
        cfg = cfg.replace(llm_config=table)
    overrides = {k: v for k, v in (("workers", args.workers), ("executor", args.executor),
                                   ("budget", cfg.budget if args.budget else None),
                                   ("task_timeout_s", args.task_timeout)) if v is not None}
    view = CampaignView("jsonl" if args.jsonl else "quiet" if args.quiet else "rich")
    res = run_campaign(cfg, resume=args.resume, on_event=view, overrides=overrides, expect=expect)
    view.summary(res)
    return 1 if res.status == "stopped" else 0


def cmd_library(args) -> int:
    from .library import TIME_RTOL, Library, verify_library

    if args.action == "verify-ranges":
        from .ranges import cmd_verify_ranges

        return cmd_verify_ranges(args)
    lib = Library.open(args.path)
    if args.action == "list":
        rows = [{"id": e.id, "op": e.op, "kind": e.kind, "dtypes": e.dtypes, "speedup": e.speedup,
                 "roofline_fraction": e.roofline_fraction, "simulated_seconds": e.simulated_seconds,
                 "sizes": [v["sizes"] for v in e.verified_at]} for e in lib.entries]
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            print(f"{lib.root}: {len(rows)} kernel(s), machine {lib.manifest.get('machine')}, "
                  f"{lib.manifest.get('emulator_version')}")
            for r in rows:
                roof = f"{r['roofline_fraction']:.0%}" if r["roofline_fraction"] is not None else "-"
                print(f"  {r['id']:<40} {r['kind']:<6} {','.join(r['dtypes']):<10} {r['speedup']:6.2f}x  "
                      f"roofline {roof:>4}  {r['simulated_seconds'] * 1e6:10.1f} us")
        return 0
    if args.action == "show":
        if not args.name:
            raise UsageError("library show needs a kernel id, op or task name")
        found = lib.get(args.name)
        if not found:
            raise UsageError(f"{args.name}: no such kernel in {lib.root} (see `agentforge library list {args.path}`)")
        for e in found:
            if args.json:
                print(json.dumps(e.to_dict(), indent=2))
            else:
                print(json.dumps({k: v for k, v in e.to_dict().items() if k != "plan"}, indent=2))
                print(lib.source(e))
        return 0
    if args.action == "merge":
        if not args.name:
            raise UsageError("library merge needs the library to merge in: agentforge library merge INTO FROM")
        other = Library.open(args.name)
        if not args.json:
            print(f"merging {len(other.entries)} kernel(s) of {args.name} into {args.path}: each is verified and timed "
                  f"here, in a confined worker, against this library's own tasks", file=sys.stderr)
        report = lib.merge(other, timeout_s=args.timeout)
        if args.json:
            print(json.dumps(report, indent=2))
        else:
            for r in report["kernels"]:
                mark = {"added": "added", "replaced": "replaced", "kept_existing": "kept"}.get(r["status"], "REJECTED")
                mark = f"{mark:<8}"
                detail = r["reason"].replace("\n", "\n    ")
                print(f"{mark} {r['id']} ({r['task']}): " + (f"[{r['code']}] " if r["code"] else "") + detail)
            print(f"merged {args.name} into {args.path}: {report['added']} added, {report['replaced']} replaced by "
                  f"faster kernels, {report['kept_existing']} kept as they were, {report['rejected']} rejected")
        return 1 if report["rejected"] else 0
    rows = verify_library(lib, timeout_s=args.timeout)
    bad = [r for r in rows if not r["ok"]]
    if args.recapture:
        _recapture(lib, rows, quiet=args.json)
    caps = {r["captures"]["file"]: r["captures"] for r in rows}
    stale = [c for c in caps.values() if c["status"] == "stale"]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            print(f"{'ok  ' if r['ok'] else 'FAIL'} {r['id']}" + "".join(f"\n     - {p}" for p in r["problems"]))
        print(f"{len(rows) - len(bad)}/{len(rows)} kernels verified and timed as recorded "
              f"(times within a relative {TIME_RTOL:g})")
        _print_captures(caps, args.path)
    return 1 if bad or stale else 0


def _print_captures(caps: dict[str, dict], path: str) -> None:
    """``library verify``'s lines on the tasks' stored captures: what load_library will do with each."""
    counts = {s: sum(c["status"] == s for c in caps.values()) for s in ("ok", "missing", "stale")}
    for file, c in sorted(caps.items()):
        if c["status"] == "ok":
            print(f"ok    {file}: {c['graphs']} stored graph(s), loading uses them")
        elif c["status"] == "missing":
            print(f"none  {file}: loading captures this task (fine; --recapture stores them)")
        else:
            print(f"STALE {c['reason']}\n     - loading warns (StoredCapturesWarning) and captures this task again")
    print(f"stored captures: {counts['ok']} ok, {counts['missing']} missing (captured at load), "
          f"{counts['stale']} stale or damaged")
    if counts["stale"]:
        print(f"  how to fix: agentforge library verify {path} --recapture (rewrites them from the library's tasks, "
              f"running the task code in this process as loading does), or delete the stale files (loading then "
              f"captures those tasks, as for an older library)")


def _recapture(lib, rows: list[dict], quiet: bool) -> None:
    """``library verify --recapture``: rewrite the stored captures of each task whose file is missing or
    stale and whose kernels all verified as recorded (a task that fails is left for its own fix); ``rows``'
    ``captures`` are updated in place."""
    from .library import recapture

    by_task: dict[str, list[dict]] = {}
    for r, e in zip(rows, lib.entries):
        by_task.setdefault(e.task_file, []).append(r)
    for task_file, rs in by_task.items():
        before = rs[0]["captures"]
        if before["status"] == "ok" or not all(r["ok"] for r in rs):
            continue
        try:
            now = recapture(lib, task_file)
        except (AgentforgeError, OSError, ValueError) as x:     # the task no longer captures here: say so
            print(f"could not recapture {before['file']}: {x}", file=sys.stderr)
            continue
        for r in rs:
            r["captures"] = now
        if not quiet:
            print(f"recaptured {now['file']} (was {before['status']}): {now['status']}, {now['graphs']} graph(s)",
                  file=sys.stderr)


def _llm_roles(args, ctx):
    """LLM roles from the [llm] table of agentforge.toml (user, then project level), overridden
    by flags; a missing key or unreachable server stops here (preflight), never a silent switch
    to another backend."""
    from .agents.llm_roles import llm_roles
    from .agents.offline import OfflinePlanner
    from .campaign.config import load_config
    from .llm import LLMConfig

    table = dict(load_config().llm_config)    # secrets in a file are refused there
    if args.llm == "replay":
        table["provider"] = "replay"
        table["replay_path"] = args.transcript or table.get("replay_path")
        if not table["replay_path"]:
            raise UsageError("--llm replay needs --transcript FILE (a JSONL transcript recorded with --llm openai)")
    else:
        for key, flag in (("model", args.model), ("base_url", args.base_url), ("record_path", args.transcript)):
            if flag:
                table[key] = flag
        if not table.get("model"):
            raise UsageError("--llm openai needs a model: --model NAME, or model = \"...\" in the [llm] table of "
                             "agentforge.toml (and --base-url or base_url for a non-OpenAI server)")
    try:
        cfg = LLMConfig.from_dict(table)
    except (ValueError, TypeError) as e:
        raise UsageError(f"[llm]: {e}") from None
    return llm_roles(cfg, workers=args.workers, fallback_planner=OfflinePlanner())


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    ap = argparse.ArgumentParser(prog="agentforge", description="Agents that write kernels for an emulated RDU")
    ap.add_argument("--version", action="version", version=f"agentforge {__version__}")
    sub = ap.add_subparsers(dest="cmd", required=True)

    def common(p):
        p.add_argument("--machine", default="sn40l", help="machine preset (sn40l, rdu-mini) or a TOML file")
        p.add_argument("--json", action="store_true", help="print the evaluation as JSON (docs/evaluation.md)")
        p.add_argument("--timeout", type=float, default=300.0, help="seconds before an evaluation is killed")
        p.add_argument("--memory-mb", type=int, default=4096, help="memory cap of the evaluation process")

    p = sub.add_parser("eval", help="verify and score one ASP kernel against a task")
    p.add_argument("task", help="a task .py file")
    p.add_argument("kernel", help="an .asp kernel file")
    common(p)
    p.add_argument("--in-process", action="store_true", help="no worker process (no time or memory cap)")
    p.set_defaults(func=cmd_eval)
    p = sub.add_parser("baseline", help="lower a task op by op to ASP, verify and time the chain")
    p.add_argument("task", help="a task .py file")
    p.add_argument("-o", "--output", help="write every kernel and baseline.json to this folder")
    common(p)
    p.set_defaults(func=cmd_baseline)
    p = sub.add_parser("solve", help="run the agent loop on one task and write the best verified kernel")
    p.add_argument("task", help="a task .py file")
    p.add_argument("--llm", choices=("offline", "openai", "replay"), default="offline",
                   help="who plans and writes kernels (default: the offline author, no network)")
    p.add_argument("-o", "--output", help="write the best verified candidate here")
    p.add_argument("--attempts", type=int, default=4, help="rounds of write -> evaluate -> reflect")
    p.add_argument("--workers", type=int, default=1, help="candidates written per round")
    p.add_argument("--plan-cache", help="SQLite plan cache to consult and update")
    p.add_argument("--experience", help="SQLite experience library to learn from and add to")
    p.add_argument("--isolate", action="store_true", help="evaluate in a worker process (always for LLMs)")
    p.add_argument("--model", help="LLM model name (openai)")
    p.add_argument("--base-url", help="OpenAI-compatible endpoint (openai)")
    p.add_argument("--transcript", help="JSONL transcript to record (openai) or replay (replay)")
    common(p)
    p.set_defaults(func=cmd_solve)
    p = sub.add_parser("campaign", help="run a suite to a verified kernel library (resumable, under a budget)")
    p.add_argument("suite", nargs="?", help="a folder of task files (default: the bundled suite)")
    p.add_argument("--llm", choices=("offline", "openai", "replay"), help="who writes kernels (default offline)")
    p.add_argument("--model", help="LLM model name (openai)")
    p.add_argument("--base-url", help="OpenAI-compatible endpoint (openai)")
    p.add_argument("--machine", help="machine preset (sn40l, rdu-mini) or a TOML file")
    p.add_argument("--out", help="the run directory (default runs/SUITE-DATE; with --resume: the latest run)")
    p.add_argument("--workers", type=int, help="tasks solved at once, each in its own process")
    p.add_argument("--executor", choices=("local", "ray"), help="local processes or a Ray cluster")
    p.add_argument("--ray-address", help="Ray cluster address (default: start a local Ray)")
    p.add_argument("--budget", help="hard limits, e.g. attempts=200,tokens=1000000,cost=5,minutes=30")
    p.add_argument("--attempts", type=int, help="rounds per task (default 4)")
    p.add_argument("--tasks", help="only these tasks (comma-separated names)")
    p.add_argument("--task-timeout", type=float, help="seconds before a task is killed (default 900)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out after a crash, kill or budget")
    p.add_argument("--from-model", metavar="SPEC", help="tasks from a model instead of a suite: path/to/file.py:factory "
                                                       "or a Hugging Face config.json (docs/pytorch.md)")
    p.add_argument("--batch", type=int, help="--from-model: sequences per forward (default 1)")
    p.add_argument("--prompt-tokens", help="--from-model: prompt lengths to capture, e.g. 16,64 (default 16)")
    p.add_argument("--max-new-tokens", type=int, help="--from-model: tokens generated after the prompt")
    p.add_argument("--exact-prompts", action="store_true",
                   help="--from-model: verify prefill kernels at the --prompt-tokens lengths only, not over every "
                        "prompt length up to the model's max_position_embeddings (a shorter campaign)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quiet", action="store_true", help="only the summary")
    mode.add_argument("--jsonl", action="store_true", help="every event as a JSON line on stdout")
    p.set_defaults(func=cmd_campaign)
    p = sub.add_parser("library", help="list, show, merge or re-verify a kernel library",
                       description="merge INTO FROM re-verifies and re-times every kernel of FROM against INTO's own "
                                   "tasks before it may replace anything; exit 1 when any kernel was rejected. verify "
                                   "re-verifies and re-times every kernel and checks each task's stored captures as "
                                   "loading would; exit 1 on any mismatch or stale captures file. verify-ranges "
                                   "verifies each kernel over a declared range per size and records it, so PyTorch "
                                   "dispatch uses it anywhere inside without verifying (docs/library.md).")
    p.add_argument("action", choices=("list", "show", "merge", "verify", "verify-ranges"))
    p.add_argument("path", help="a library folder (a campaign's OUT/library)")
    p.add_argument("name", nargs="?", help="show: a kernel id, op or task; merge: the library to merge in")
    p.add_argument("--range", action="append", metavar="NAME=LO..HI",
                   help="verify-ranges: a size's range (repeatable); overrides the task sidecar's [ranges]")
    p.add_argument("--only", help="verify-ranges: only the kernels of this id, op or task")
    p.add_argument("--seeds", type=int, default=None, help="verify-ranges: input draws per point")
    p.add_argument("--workers", type=int, default=1, help="verify-ranges: kernels verified at once, a process each")
    p.add_argument("--timeout", type=float, default=300.0,
                   help="verify, merge: seconds before one kernel's evaluation is killed")
    p.add_argument("--recapture", action="store_true",
                   help="verify: rewrite each task's missing or stale stored captures (tasks/*/*.captures.json) "
                        "when its kernels verified; runs the task code in this process, as load_library does")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_library)
    from .review.cli import add_parsers as add_review_parsers
    from .torch.cli import add_report_parser

    add_review_parsers(sub)      # review, show
    add_report_parser(sub)       # report
    p = sub.add_parser("cache", help="plan cache statistics (exact and structural hits, false hits, misses, what "
                                     "the hits saved; docs/memory.md) or clearing")
    p.add_argument("action", choices=("stats", "clear"))
    p.add_argument("--db", default=".agentforge/memory.sqlite", help="the plan cache file")
    p.add_argument("--json", action="store_true", help="print the statistics as JSON (hits, exact_hits, class_hits: "
                                                       "structural, false_hits, misses, planner_calls_saved, ...)")
    p.set_defaults(func=cmd_cache)
    p = sub.add_parser("estimate", help="whole-model decode tokens/s per user and time to first token on N sockets "
                                        "(docs/multisocket.md)")
    p.add_argument("model", help="a Hugging Face-style config.json, or a bundled model: llama-3.1-8b, llama-3.1-70b, "
                                 "llama-3.1-405b, llama-2-7b")
    p.add_argument("--machine", default="sn40l", help="a node preset (sn40l-node8, sn40l-node16), a node TOML file, "
                                                     "a socket preset (sn40l: its node presets) or a socket machine file")
    p.add_argument("--sockets", type=int, help="sockets to shard over (default: all of the node)")
    p.add_argument("--batch", type=int, default=1, help="users decoding at once")
    p.add_argument("--prompt-tokens", type=int, default=1024, help="prompt length (prefill; decode context)")
    p.add_argument("--weight-dtype", choices=("bf16", "fp8", "int8"), default="bf16")
    p.add_argument("--spec-accept", type=float, default=1.0,
                   help="speculative decoding: tokens kept per target step (1 = none)")
    p.add_argument("--reconfig", choices=("resident", "chain"), default="resident",
                   help="resident: a layer's kernels stay configured (default); chain: reconfigure between kernels")
    p.add_argument("--pipeline", type=int, default=1,
                   help="pipeline stages over the layers (each of sockets/pipeline tensor-parallel sockets)")
    p.add_argument("--json", action="store_true", help="print the estimate as JSON")
    p.set_defaults(func=cmd_estimate)
    return ap


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
