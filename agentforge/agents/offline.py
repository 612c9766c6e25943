"""The offline roles: no network, search and rules over the ATen graph and the emulator.

- planner: agentforge.author decides fusion (regions valid at every size of the task) and
  tunes tiling and parallelism on the timing model, starting from priors learned from
  earlier verified plans;
- worker: realizes the plan (worker i > 0 tries a variant, so parallel workers explore); for a
  task that asks for N > 1 sockets (sidecar ``[task] sockets``) whose graph is a block
  agentforge.shard can split, it writes that block's tensor-parallel kernel for N sockets
  instead, and falls back to the plan (saying why in the candidate's notes) when the graph is
  no such block or the kernel failed verification;
- reflector: reads the evaluator's report and revises the plan: a kernel that fails to
  check or runs out of on-chip memory gets its region split or shrunk; a numerical mismatch
  splits the largest fused region (bisecting towards the op-by-op chain, which always
  verifies); a verified plan is accepted.
"""

from __future__ import annotations

import copy
import re

from ..author import Plan, Region, author_plan, semantic_nodes, tune
from .roles import Candidate, Demo, Feedback, Reflection, TaskContext, Usage


class OfflinePlanner:
    def __init__(self, priors: dict | None = None):
        self.usage = Usage()
        self.priors = priors or {}
        self.search_evaluations = 0   # timing-model evaluations spent searching parameters
        self.search_evaluations_saved = 0   # estimated evaluations plan cache hits spared it (set by the loop)

    def plan(self, ctx: TaskContext, demos: list[Demo]) -> dict:
        tuned = author_plan(ctx.graph_own, ctx.machine, self.priors, graphs_small=ctx.graphs_small)
        self.search_evaluations += tuned.configs_tried
        return tuned.plan.to_dict()


class OfflineWorker:
    def __init__(self, worker_id: int = 0):
        self.usage = Usage()
        self.worker_id = worker_id
        self._sharded: dict[str, str] = {}   # task -> why its N-socket kernel is not offered again

    def write(self, ctx: TaskContext, plan: dict, feedback: Feedback | None, demos: list[Demo],
              attempt: int) -> Candidate:
        why = ""
        sockets = getattr(ctx.task, "sockets", 1)
        if sockets > 1:
            sharded, why = self._sharded_kernel(ctx, sockets, feedback)
            if sharded is not None:
                return sharded
        p = copy.deepcopy(plan)
        if self.worker_id:
            p = variant(p, self.worker_id)
        notes = f"{len(p['regions'])} kernel(s)" + (f", variant {self.worker_id}" if self.worker_id else "")
        if why:
            notes = f"single-socket plan ({notes}): {why}"
        return Candidate("plan", plan=p, author="offline", notes=notes)

    def _sharded_kernel(self, ctx: TaskContext, sockets: int, feedback: Feedback | None
                        ) -> tuple[Candidate | None, str]:
        """The task's tensor-parallel kernel on ``sockets`` sockets, or None and why not. Written
        once per task: if it failed verification, the later attempts go back to the plan."""
        name = ctx.task.name
        if name in self._sharded and feedback is not None and not feedback.verified:
            self._sharded[name] = (f"the {sockets}-socket kernel failed verification "
                                   f"({feedback.reason_code}: {feedback.reason})")
        if self._sharded.get(name):
            return None, self._sharded[name]
        from ..shard import shard_task_kernel

        found = shard_task_kernel(ctx.graph_own, sockets, ctx.machine.name)
        if isinstance(found, str):
            self._sharded[name] = found
            return None, self._sharded[name]
        choice, block = found
        self._sharded[name] = ""
        cfg = ", ".join(f"{k}={v}" for k, v in choice.configs[sockets].items())
        one = choice.seconds.get(1)
        vs = (f"; timed {choice.seconds[sockets] * 1e6:.3g} us against {one * 1e6:.3g} us for the same block "
              "on one socket" if one else "")
        return Candidate("kernel", source=choice.source, author="offline",
                         notes=f"tensor-parallel {block.describe()} on {sockets} sockets "
                               f"(agentforge/shard.py; tiles {cfg}){vs}"), ""


def variant(plan: dict, k: int) -> dict:
    """A neighbour of a plan: worker k halves (odd k) or doubles (even k) tile rows/sizes."""
    out = copy.deepcopy(plan)
    f = 0.5 if k % 2 else 2.0
    for r in out["regions"]:
        for key in ("rows", "tm", "tn"):
            if key in r.get("params", {}):
                r["params"][key] = max(1, int(r["params"][key] * f))
    return out


_KERNEL_FILE = re.compile(r"([A-Za-z0-9_]+)\.asp:(\d+):(\d+)")


class OfflineReflector:
    def __init__(self, min_speedup: float = 1.0):
        self.usage = Usage()
        self.min_speedup = min_speedup

    def reflect(self, ctx: TaskContext, plan: dict, candidate: Candidate, feedback: Feedback,
                attempt: int) -> Reflection:
        if feedback.verified:
            return Reflection(True, None, f"verified at {feedback.speedup:.2f}x")
        p = Plan.from_dict(candidate.plan or plan)
        fused = [i for i, r in enumerate(p.regions) if r.template != "single"]
        if not fused:
            return Reflection(True, None, "the op-by-op plan itself was rejected: nothing left to split")
        if feedback.reason_code == "uncheckable" and any(_tiles(p.regions[i]) for i in fused):
            # its timed tiles need check sizes past the interpreter's budget: smaller tiles are checked
            # (and then timed) at smaller sizes; splitting the region would keep the same tiles
            halved = []
            for i in fused:
                for key in _tiles(p.regions[i]):
                    p.regions[i].params[key] = int(p.regions[i].params[key]) // 2
                    halved.append(f"{i}.{key}")
            p.notes += "; halved tiles to be checkable"
            return Reflection(False, p.to_dict(), "uncheckable: halved the tiles of its fused regions "
                              f"({', '.join(halved)}) so its timed configuration fits the check budget")
        target = self._culprit(ctx, p, feedback)
        if feedback.reason_code in ("compile", "limit") and target is not None and \
                "ResourceError" in (feedback.error or feedback.reason or "") and _shrinkable(p.regions[target]):
            r = p.regions[target]
            for key in ("rows", "tm", "tn", "tk", "par"):
                if key in r.params:
                    r.params[key] = max(1, int(r.params[key]) // 2)
            return Reflection(False, p.to_dict(), f"region {target} overflows the chip: halved its tiles")
        if target is None:
            target = max(fused, key=lambda i: len(p.regions[i].nodes))
        r = p.regions[target]
        singles = [Region("single", [i]) for i in r.nodes]
        p.regions[target:target + 1] = singles
        revised = tune(Plan(p.regions, notes=p.notes + f"; split region {target}"), ctx.graph_own, ctx.machine)
        return Reflection(False, revised.plan.to_dict(),
                          f"{feedback.reason_code}: split region {target} ({r.template}, {len(r.nodes)} ops) "
                          "into single ops")

    def _culprit(self, ctx: TaskContext, plan: Plan, feedback: Feedback) -> int | None:
        """The region whose kernel an error names (kernels are compiled as <node>.asp)."""
        text = (feedback.error or "") + " " + (feedback.reason or "")
        m = _KERNEL_FILE.search(text)
        if not m:
            return None
        node = m.group(1)
        sem = semantic_nodes(ctx.graph_own)
        names = [n.name for n in sem]
        for ri, r in enumerate(plan.regions):
            if any(0 <= i < len(names) and names[i] == node for i in r.nodes):
                return ri
        return None


def _tiles(r: Region) -> list[str]:
    """The tile-size parameters of a fused region that can still be halved."""
    return [k for k in ("rows", "tm", "tn", "tk") if int(r.params.get(k, 1)) > 1]


def _shrinkable(r: Region) -> bool:
    return any(int(r.params.get(k, 1)) > 1 for k in ("rows", "tm", "tn", "tk", "par"))
