"""From a user's model to campaign tasks: ``agentforge campaign --from-model SPEC``.

Why: the library's kernels are matched in a model's graph by structure and verified problem
(:mod:`agentforge.torch.match`). A suite written by hand covers a model only where the model
happens to be written like a task and runs at the task's sizes; a Hugging Face model almost
never is. So the tasks are taken from the model itself:

1. the model is captured at the shapes it will serve (``--batch`` x each ``--prompt-tokens``),
   exported and decomposed to core ATen exactly as the backend sees it (:func:`export_graph`);
2. the graph is split into fusible regions by the offline author's partitioner
   (:func:`agentforge.author.partition`, its public API: row, matmul, attention and MoE regions);
3. each region becomes an ordinary task file whose ``forward`` replays the region's ATen ops
   (``torch.ops.aten.*``) on the region's inputs and the model parameters it reads (as the
   task's own parameters, random with the model's mean and spread); values the backend's
   matcher looks through (copies, views that only merge or split leading dims) are resolved
   the same way here, so a task's graph is the model's subgraph as the matcher binds it;
4. regions with the same generated program (same ops, wiring, shapes, dtypes) are one task:
   every layer of a model shares its tasks;
5. the folder is an ordinary suite; the campaign solves it and the library it writes covers
   the model (at the captured shapes).

Values no input reaches (``arange`` positions, the causal mask built from them, RoPE tables):
the export gives each op that reads one its own copy (:func:`~agentforge.torch.match.rematerialize_constants`,
as XLA duplicates iotas into each fusion), and a region that reads constants is a task twice:
once making them inside (the kernel holds them, as a compiled dataflow program holds its
constants: what the backend sees in ``torch.compile``'s graph) and once taking them as inputs
(``generate()``'s prefill builds the mask from its ``attention_mask`` data). The forward is
also captured as dynamo hands it to the backend, since Hugging Face builds the causal mask
differently under dynamo and under ``torch.export``. Regions of views only are left out (they
compute nothing).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import operator
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from agentforge.errors import AgentforgeError

__all__ = ["ModelSpecError", "ModelTask", "load_model_spec", "serving_inputs", "decode_steps", "model_tasks", "write_suite",
           "from_model_suite"]

_VIEW_KINDS = frozenset({"view", "permute", "expand", "getitem", "clone", "alias", "detach", "split_with_sizes",
                         "split", "unbind"})


class ModelSpecError(AgentforgeError):
    """A ``--from-model`` spec that cannot be loaded (says what to fix)."""


# ------------------------------------------------------------------ loading the model


class _Logits(torch.nn.Module):
    """A causal LM as a function of token ids to logits (no KV cache in the outputs), so that
    torch.export captures the prefill forward as the backend runs it."""

    def __init__(self, lm: torch.nn.Module):
        super().__init__()
        self.lm = lm

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.lm(input_ids, use_cache=False).logits


@dataclass
class LoadedModel:
    """A model from a spec: the module, and its example inputs when the spec gave them (a
    factory's ``(module, inputs)``); a causal LM from a config takes token ids instead."""
    name: str
    module: torch.nn.Module
    example_inputs: list[torch.Tensor] | None = None
    vocab_size: int | None = None


def load_model_spec(spec: str) -> LoadedModel:
    """``path/to/file.py:factory`` (the factory returns an ``nn.Module``, or ``(module, inputs)``)
    or a Hugging Face ``config.json`` (a causal LM with random weights, needs transformers)."""
    torch.manual_seed(0)
    if spec.endswith(".json"):
        path = Path(spec)
        if not path.is_file():
            raise ModelSpecError(f"{spec}: no such config file\n  how to fix: pass a Hugging Face config.json, or "
                                 f"path/to/file.py:factory")
        try:
            import transformers
        except ImportError:
            raise ModelSpecError(f"{spec}: a Hugging Face config needs transformers\n  how to fix: pip install "
                                 f"'agentforge[hf]'") from None
        try:
            data = json.loads(path.read_text())
            cfg = transformers.AutoConfig.for_model(**data) if "model_type" in data else None
        except (ValueError, KeyError) as e:
            raise ModelSpecError(f"{spec}: not a Hugging Face model config ({e})\n  how to fix: the file needs a "
                                 f"'model_type' (e.g. \"llama\") and the model's sizes") from None
        if cfg is None:
            raise ModelSpecError(f"{spec}: no 'model_type' key\n  how to fix: add \"model_type\": \"llama\" (or the "
                                 f"model's type) to the config")
        model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
        return LoadedModel(path.stem if path.stem != "config" else cfg.model_type, model, None,
                           getattr(cfg, "vocab_size", None))
    file, sep, factory = spec.rpartition(":")
    if not sep or not file.endswith(".py"):
        raise ModelSpecError(f"{spec}: not a model spec\n  how to fix: pass path/to/file.py:factory (a function "
                             f"returning an nn.Module, or (module, example inputs)) or a Hugging Face config.json")
    path = Path(file)
    if not path.is_file():
        raise ModelSpecError(f"{file}: no such file (from --from-model {spec})")
    mod_name = f"_agentforge_model_{abs(hash(str(path.resolve())))}"
    s = importlib.util.spec_from_file_location(mod_name, path)
    module = importlib.util.module_from_spec(s)
    sys.modules[mod_name] = module
    try:
        s.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - the user's file
        raise ModelSpecError(f"{file}: importing it failed: {type(e).__name__}: {e}") from None
    fn = getattr(module, factory, None)
    if not callable(fn):
        raise ModelSpecError(f"{file}: no function {factory!r}\n  how to fix: define def {factory}(): return model "
                             f"(or model, [example inputs])")
    got = fn()
    inputs = None
    if isinstance(got, tuple) and len(got) == 2:
        got, inputs = got
        inputs = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
    if not isinstance(got, torch.nn.Module):
        raise ModelSpecError(f"{spec}: returned {type(got).__name__}, not an nn.Module")
    cfg = getattr(got, "config", None)
    return LoadedModel(factory, got.eval(), inputs, getattr(cfg, "vocab_size", None))


@contextlib.contextmanager
def _recording(module: torch.nn.Module) -> Iterator[list[tuple[int, torch.fx.GraphModule, list[Any]]]]:
    """``module.forward`` compiled with a backend that records every graph dynamo hands a backend
    and each call's arguments, as (which call of the forward, graph, arguments). The forward is
    restored after (a forward set on the instance, a compiled one say, too); dynamo's caches are
    reset before and after, so a model compiled earlier in this process recompiles (and is planned
    again) on its next call: capture before compiling, as ``campaign --from-model`` does."""
    calls: list[tuple[int, torch.fx.GraphModule, list[Any]]] = []
    step = [0]

    def record(gm: torch.fx.GraphModule, _example: Any) -> Any:
        def run(*args: Any) -> Any:
            calls.append((step[0], gm, list(args)))
            return gm(*args)
        return run

    compiled = torch.compile(module.forward, backend=record)

    def counted(*args: Any, **kwargs: Any) -> Any:
        step[0] += 1
        return compiled(*args, **kwargs)

    mine = module.__dict__.get("forward")
    torch._dynamo.reset()
    module.forward = counted
    try:
        yield calls
    finally:
        if mine is None:
            del module.forward
        else:
            module.forward = mine
        torch._dynamo.reset()


def decode_steps(lm: torch.nn.Module, prompt: torch.Tensor, steps: int = 3,
                 skip: int = 1) -> list[tuple[int, torch.nn.Module, list[torch.Tensor]]]:
    """The decode step of a causal LM as ``torch.compile`` hands it to a backend inside
    ``generate()``: each graph dynamo compiles for a decode step, with the tensors it was called
    with, at ``steps`` consecutive KV lengths after the first ``skip`` decode steps (dynamo
    compiles the first step static and recompiles the next with a symbolic KV length, the graph
    the backend plans once). Returns (KV length before the step, graph with its sizes bound, tensors).

    Why not export a wrapper that rebuilds the cache: the model's code takes other branches under
    dynamo inside ``generate()`` (the causal mask is skipped for one query token), so a task
    captured from a wrapper is not the graph the backend will see, and never matches it."""
    from agentforge.torch.backend import bound_graph

    n = 1 + skip + steps
    with _recording(lm) as calls, torch.no_grad():
        lm.generate(prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
    p = prompt.shape[1]
    out = []
    for s, gm, args in calls:
        kv = p + s - 2                      # call 1 is the prefill, call 2 the first token over p cached
        if 2 + skip <= s < 2 + skip + steps:
            out.append((kv, *bound_graph(gm, args)))
    return out


def graph_pieces(module: torch.nn.Module, inputs: Sequence[torch.Tensor]) -> list[tuple[torch.nn.Module,
                                                                                       list[torch.Tensor]]]:
    """The graphs dynamo splits one forward into at its graph breaks (data-dependent Python
    control flow, say ``if h.mean() > 0:``), each with the tensors it was called with: what a
    backend is handed, piece by piece, for a model torch.export cannot capture whole."""
    from agentforge.torch.backend import bound_graph

    with _recording(module) as calls, torch.no_grad():
        module(*inputs)
    return [bound_graph(gm, args) for _, gm, args in calls]


def serving_inputs(m: LoadedModel, batch: int = 1, prompt_tokens: Sequence[int] = (16,),
                   decode: bool = False, prompt_ranges: bool = False) -> list[tuple[str, torch.nn.Module,
                                                                                     list[torch.Tensor]]]:
    """The shapes the model will serve: a causal LM at ``batch`` x each prompt length (token ids,
    no cache) and, with ``decode``, the decode steps ``generate()`` runs after each prompt
    (:func:`decode_steps`: dynamo's graph, at three consecutive KV lengths; what does not depend on
    the KV length shows the same at all three, what does is written symbolic in it,
    :func:`model_tasks`); a factory's model at its example inputs. With ``prompt_ranges`` each
    prompt length ``P`` is captured at ``P``, ``P + 1`` and ``P + 2`` too (what changes with it is
    written symbolic in ``TOKENS``). Returns (label, module, inputs)."""
    return [(label, module, inputs) for _, label, module, inputs in
            _serving(m, batch, prompt_tokens, decode, prompt_ranges)]


def _serving(m: LoadedModel, batch: int, prompt_tokens: Sequence[int], decode: bool,
             prompt_ranges: bool) -> list[tuple[tuple[str, int] | None, str, torch.nn.Module, list[torch.Tensor]]]:
    """:func:`serving_inputs`, each with the group of captures whose size varies that it belongs to:
    ("prefill", P) for P, P + 1, P + 2 tokens with ``prompt_ranges`` (and ("compiled prefill", P) for
    the same forwards as dynamo hands them to a backend), ("decode", P) for the decode
    steps after a P-token prompt, None for a capture at fixed sizes (prompt lengths that overlap
    are captured once per group, so no group takes another's captures)."""
    if m.example_inputs is not None:
        return [(None, "example", m.module, list(m.example_inputs))]
    if m.vocab_size is None:
        raise ModelSpecError(f"{m.name}: the factory returned no example inputs and the model has no config."
                             f"vocab_size\n  how to fix: return (model, [example inputs]) from the factory")
    g = torch.Generator().manual_seed(0)
    wrapped = _Logits(m.module)
    prompts = list(dict.fromkeys(prompt_tokens))
    out: list[tuple[tuple[str, int] | None, str, torch.nn.Module, list[torch.Tensor]]] = []
    for p in prompts:
        for q in (p, p + 1, p + 2) if prompt_ranges else (p,):
            ids = torch.randint(0, m.vocab_size, (batch, q), generator=g)
            out.append((("prefill", p) if prompt_ranges else None, f"prefill {batch}x{q}", wrapped, [ids]))
            # the forward as torch.compile hands it to a backend: the model's code builds its causal
            # mask otherwise under dynamo than under torch.export, and the tasks that make the mask
            # inside (model_tasks) must be the backend's (a forward split at graph breaks is left to
            # the capture above)
            pieces = graph_pieces(m.module, [ids])
            if len(pieces) == 1:
                out.append((("compiled prefill", p) if prompt_ranges else None, f"compiled prefill {batch}x{q}",
                            *pieces[0]))
    if decode:
        for p in prompts:
            prompt = torch.randint(0, m.vocab_size, (batch, p), generator=g)
            out += [(("decode", p), f"decode {batch}x1 kv {kv}", fn, tensors)
                    for kv, fn, tensors in decode_steps(m.module, prompt)]
    return out


# ------------------------------------------------------------------ regions as tasks


@dataclass
class ModelTask:
    """One generated task: its source, where it came from in the model, how often it occurs."""
    name: str
    source: str
    kinds: list[str]                      # the region's non-view op kinds
    occurrences: list[str] = field(default_factory=list)   # "<shape label>: first node .. last node"
    template: str = ""
    flops: int = 0
    #: sizes the task is symbolic in and the range its kernel is to be verified over ({"KV": "1..127"})
    ranges: dict[str, str] = field(default_factory=dict)


def _fmt(v: Any, names: dict[str, str]) -> str:
    if isinstance(v, torch.fx.Node):
        return names[v.name]
    if isinstance(v, (list, tuple)):
        inner = ", ".join(_fmt(x, names) for x in v)
        return f"[{inner}]" if isinstance(v, list) else f"({inner}{',' if len(v) == 1 else ''})"
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return repr(v)
    if isinstance(v, int):
        return repr(v)
    if isinstance(v, float):
        return f"float({str(v)!r})" if not math.isfinite(v) else repr(v)
    if isinstance(v, torch.dtype):
        return str(v)
    if isinstance(v, torch.device):
        return "dev"
    if isinstance(v, (torch.layout, torch.memory_format)):
        return str(v)
    if isinstance(v, torch.SymInt):
        return repr(int(v))
    raise ModelSpecError(f"cannot write the argument {v!r} ({type(v).__name__}) into a task")


def _target(n: torch.fx.Node) -> str:
    t = n.target
    if isinstance(t, torch._ops.OpOverload):
        ns, op, overload = str(t).split(".")
        return f"torch.ops.{ns}.{op}.{overload}"
    raise ModelSpecError(f"cannot write the call {t!r} into a task")


def _val(n: torch.fx.Node) -> Any:
    return n.meta.get("val")


def _input_expr(n: torch.fx.Node, high: int | None, masks: frozenset[str] = frozenset(),
                guarded: bool = False) -> str:
    v = _val(n)
    shape = list(v.shape)
    if n.name in masks:
        # an additive mask (0 / -inf in the model): checked with masked entries and, where the
        # region guards fully masked rows (``guarded``: SDPA's where), with a fully masked first
        # row in every [.., rows, cols] slice, so the checks reach what the guard exists for
        fill = f"torch.where(torch.rand({shape}) < 0.3, float('-inf'), torch.randn({shape}, dtype={v.dtype}))"
        if guarded and len(shape) > 1:
            return f"{fill}.index_fill(-2, torch.tensor([0]), float('-inf'))"
        return fill
    if v.dtype == torch.bool:
        return f"torch.rand({shape}) < 0.5"
    if v.dtype.is_floating_point:
        return f"torch.randn({shape}, dtype={v.dtype})"
    return f"torch.randint(0, {max(1, high or 2)}, {shape}, dtype={v.dtype})"


def _op_imports(nodes: Sequence[torch.fx.Node]) -> list[str]:
    """``import`` lines for the modules that register the custom ops ``nodes`` call (a task file
    calling ``torch.ops.transformers.grouped_mm_fallback`` must import what defines it)."""
    from torch._library.custom_ops import OPDEFS

    mods = []
    for n in nodes:
        if isinstance(n.target, torch._ops.OpOverload) and n.target.namespace not in ("aten", "prims"):
            opdef = OPDEFS.get(n.target._schema.name)
            init = getattr(opdef, "_init_fn", None)
            mod = getattr(init, "__module__", None)
            if not mod or mod == "__main__":
                raise ModelSpecError(f"cannot write a call of the custom op {n.target._schema.name} into a task: "
                                     f"the module that defines it is not known\n  how to fix: define it with "
                                     f"torch.library.custom_op in an importable module")
            mods.append(mod)
    return [f"import {m}  # registers the custom op(s) this region calls" for m in dict.fromkeys(mods)]


def _group_offsets(n: torch.fx.Node, value: str) -> tuple[int, int] | None:
    """(rows, groups) when ``value`` is the ``offs`` argument of a grouped matmul ``n``."""
    from agentforge.grouped_matmul import GROUPED_MM_TARGETS

    if str(n.target).replace("::", ".") in GROUPED_MM_TARGETS and len(n.args) >= 3 \
            and isinstance(n.args[2], torch.fx.Node) and n.args[2].name == value:
        return int(_val(n.args[0]).shape[0]), int(_val(n.args[2]).shape[0])
    return None


def _offsets_expr(rows: int, groups: int, dtype: torch.dtype) -> str:
    """Cumulative row counts per group as a grouped matmul reads them: nondecreasing, random
    group sizes (empty groups included), ending at ``rows`` as Hugging Face's routing makes them."""
    return (f"torch.cat([torch.randint(0, {rows + 1}, [{groups - 1}]).sort().values, torch.tensor([{rows}])])"
            f".to({dtype})")


def _index_high(ep_nodes: dict[str, torch.fx.Node], value: str, users: dict[str, list[torch.fx.Node]]) -> int | None:
    """The range an integer input must stay in: the rows of an embedding it indexes, the size of a
    dim an index op reads with it (None: not used as an index)."""
    highs = []
    for u in users.get(value, []):
        if u.target is torch.ops.aten.embedding.default and u.args[1] is ep_nodes[value]:
            highs.append(int(_val(u.args[0]).shape[0]))
        elif u.target is torch.ops.aten.index.Tensor:
            src = _val(u.args[0])
            for d, ix in enumerate(u.args[1]):
                if ix is ep_nodes[value]:
                    highs.append(int(src.shape[d]))
        elif u.target in (torch.ops.aten.gather.default, torch.ops.aten.index_select.default):
            src = _val(u.args[0])
            highs.append(int(src.shape[int(u.args[1])]))
    return min(highs) if highs else None


#: ops whose value depends only on another tensor's shape and dtype (never ``empty_like``: uninitialised)
_SHAPED_CONSTANTS = frozenset({torch.ops.aten.full_like.default, torch.ops.aten.zeros_like.default,
                               torch.ops.aten.ones_like.default})


def additive_masks(ep: Any) -> frozenset[str]:
    """Nodes of ``ep`` that are additive attention masks: floating values no user input reaches
    (made from positions, once per plan) holding -inf and no other non-finite value. Evaluated
    on the constants alone (the model's parameters are not read)."""
    env: dict[str, Any] = {}
    out = set()
    for n in ep.graph.nodes:
        if n.op != "call_function" or not isinstance(n.target, torch._ops.OpOverload):
            continue
        if not all(a.name in env for a in n.all_input_nodes):
            continue
        name = str(n.target)
        if any(w in name for w in ("empty", "rand", "normal", "bernoulli", "_assert")):
            continue
        try:
            val = n.target(*torch.fx.node.map_arg(n.args, lambda x: env[x.name]),
                           **torch.fx.node.map_arg(n.kwargs, lambda x: env[x.name]))
        except Exception:  # noqa: BLE001 - not computable from constants alone: not a mask
            continue
        env[n.name] = val
        if isinstance(val, torch.Tensor) and val.dtype.is_floating_point and val.numel():
            inf = torch.isneginf(val)
            if bool(inf.any()) and bool(torch.isfinite(val[~inf]).all()):
                out.add(n.name)
    return frozenset(out)


def _region_task(ep: Any, graph: Any, view: Any, members_sem: list[str], params: dict[str, tuple[str, torch.Tensor]],
                 users: dict[str, list[torch.fx.Node]],
                 masks: frozenset[str] = frozenset(),
                 constants: frozenset[str] = frozenset()) -> tuple[str, list[str]] | None:
    """The task source of one region (None: it computes nothing), and its non-view op kinds.
    ``masks``: values that are additive attention masks (:func:`additive_masks`): an input that
    is one is checked with masked entries. ``constants`` (:func:`~agentforge.torch.match.constant_nodes`): values no input
    reaches; those only the region reads are made inside it (below)."""
    from agentforge.capture import op_kind

    fx = {n.name: n for n in ep.graph.nodes}
    members = set(members_sem)
    # getitems of a member are part of it (a multi-output op's results)
    for name in list(members):
        for u in users.get(name, []):
            if u.target is operator.getitem:
                members.add(u.name)
    sem = set(members)
    # what the matcher looks through (copies, row views) between a member and its source is pulled in,
    # so the task's inputs are the values the matcher binds
    frontier = list(members)
    while frontier:
        name = frontier.pop()
        for a in fx[name].all_input_nodes:
            if a.name in members or a.op != "call_function":
                continue
            if view.transparent(a.name):
                members.add(a.name)
                frontier.append(a.name)
    # a constant shaped like a member (``full_like(probs, 0)``: the zeros SDPA's guard selects for
    # a fully masked row) that only the region reads is made inside it: it depends on no data,
    # the kernel makes it ahead of time, and the backend's match then covers it too (left out,
    # it would be a task input and run eagerly at every call)
    for n in ep.graph.nodes:
        if n.name not in members and n.target in _SHAPED_CONSTANTS and n.all_input_nodes \
                and all(a.name in members for a in n.all_input_nodes) \
                and users.get(n.name) and all(u.name in members for u in users[n.name]):
            members.add(n.name)
            sem.add(n.name)
    # likewise the values no input reaches that only the region reads (a causal mask built from
    # positions, the positions RoPE tables are made from): the kernel makes them ahead of time, as
    # a compiled dataflow program holds its constants, and the backend's match covers them (left
    # out, the backend would compute them once per plan in PyTorch, outside every kernel). A
    # constant another region also reads stays outside (two matches cannot share a node). In
    # reverse graph order a constant's users are all settled before it is looked at: one pass.
    for n in reversed(ep.graph.nodes):
        if n.name in constants and n.name not in members and users.get(n.name) \
                and all(u.name in members for u in users[n.name]):
            members.add(n.name)
            sem.add(n.name)
    kinds = [op_kind(str(n.target)) for n in ep.graph.nodes if n.name in sem and n.target is not operator.getitem]
    if all(k in _VIEW_KINDS for k in kinds):
        return None
    order = [n for n in ep.graph.nodes if n.name in members]
    names: dict[str, str] = {}
    inputs: list[torch.fx.Node] = []
    used_params: list[str] = []
    for n in order:
        for a in n.all_input_nodes:
            if a.name in members or a.name in names:
                continue
            if a.op == "placeholder" and a.name in params:
                names[a.name] = f"self.p{len(used_params)}"
                used_params.append(a.name)
            else:
                names[a.name] = f"x{len(inputs)}"
                inputs.append(a)
    if not inputs:
        # made from constants and weights only (GPT-2's position embeddings at arange positions): a
        # task needs an input, and the variant that takes the constants as inputs covers the region
        return None
    for i, n in enumerate(order):
        names[n.name] = f"v{i}"
    # a value leaves the region when it, or a member copy / row view of it (GPT-2's wte + wpe read
    # outside only through the clone ln_1 pulled in), has a user outside: the region returns the
    # value itself, and the matcher maps the copy's outside users to that output
    escaping: set[str] = set()
    for name in members:
        if any(u.name not in members for u in users.get(name, [])):
            escaping.add(view.resolve(name) if name not in sem and view.transparent(name) else name)
    outs = [n for n in order if n.name in sem and isinstance(_val(n), torch.Tensor) and n.name in escaping]
    if not outs:
        return None
    lines = ['"""A region of a model, generated by `agentforge campaign --from-model` (agentforge.torch.from_model):',
             f"{', '.join(kinds)}.\"\"\"",
             "import torch", "import torch.nn as nn", *_op_imports(order), "", "",
             "class Model(nn.Module):", "    def __init__(self):", "        super().__init__()"]
    if not used_params:
        lines.append("        pass")
    for i, p in enumerate(used_params):
        target, value = params[p]
        value = value.detach().float()
        mean = float(value.mean()) if value.numel() else 0.0
        std = float(value.std()) if value.numel() > 1 else 0.0
        std = std if std > 1e-6 else 0.1          # a constant weight (ones) still varies in the checks
        shape = list(value.shape)
        dt = value.dtype if not params[p][1].dtype.is_floating_point else params[p][1].dtype
        if params[p][1].dtype.is_floating_point:
            lines.append(f"        self.p{i} = nn.Parameter(torch.randn({shape}, dtype={dt}) * {std:.6g} + {mean:.6g})"
                         f"  # {target}")
        else:
            lines.append(f"        self.register_buffer('p{i}', torch.randint(0, 2, {shape}, "
                         f"dtype={params[p][1].dtype}))  # {target}")
    args = ", ".join(f"x{i}" for i in range(len(inputs)))
    lines += ["", f"    def forward(self{', ' if args else ''}{args}):"]
    dev = "x0.device" if inputs else ("self.p0.device" if used_params else "None")
    body = [f"        dev = {dev}"]
    for n in order:
        if n.target is operator.getitem:
            body.append(f"        {names[n.name]} = {names[n.args[0].name]}[{n.args[1]}]")
            continue
        a = ", ".join([_fmt(x, names) for x in n.args] + [f"{k}={_fmt(v, names)}" for k, v in n.kwargs.items()])
        body.append(f"        {names[n.name]} = {_target(n)}({a})")
    ret = ", ".join(names[o.name] for o in outs)
    body.append(f"        return {ret}" if len(outs) == 1 else f"        return ({ret})")
    lines += body
    highs = [_index_high(fx, a.name, users) for a in inputs]
    exprs = []
    for a, h in zip(inputs, highs):
        offs = next((g for u in users.get(a.name, []) if (g := _group_offsets(u, a.name))), None)
        exprs.append(_offsets_expr(*offs, _val(a).dtype) if offs else _input_expr(a, h, masks, 'where' in kinds))
    lines += ["", "", "def get_inputs():", f"    return [{', '.join(exprs)}]", "", "",
              "def get_init_inputs():", "    return []", ""]
    return "\n".join(lines), kinds


def model_tasks(m: LoadedModel, batch: int = 1, prompt_tokens: Sequence[int] = (16,),
                max_tasks: int | None = None, decode: bool = False, prompt_ranges: bool = False,
                notes: list[str] | None = None, max_tokens: int | None = None) -> list[ModelTask]:
    """The model's fusible regions at its serving shapes, one task per distinct region program.
    With ``decode``, the decode step as dynamo compiles it inside ``generate()``
    (:func:`decode_steps`) at three KV lengths: a region with the same program at all three is a
    task as it is, one whose program changes with the KV length is written symbolic in ``KV``
    (:func:`_sized_tasks`). With ``prompt_ranges`` the prefill likewise, at ``P``, ``P + 1`` and
    ``P + 2`` tokens, symbolic in ``TOKENS`` over ``1..max_tokens`` (default: the config's
    ``max_position_embeddings``; without one, the lengths captured; a region that cannot be
    written so stays a task at ``P`` tokens): its kernels then serve every prompt length.
    A model torch.export cannot capture whole (data-dependent Python control flow) is captured
    piece by piece at dynamo's graph breaks (:func:`graph_pieces`), as the backend will be handed
    it; a piece that cannot be captured either is left out and ``notes`` (when given) says why."""
    from agentforge.author import partition, semantic_nodes
    from agentforge.canonical import canonical_export, canonical_graph
    from agentforge.capture import node_flops, operand_specs
    from agentforge.torch.match import GraphView, constant_nodes, weight_inputs

    tasks: dict[str, ModelTask] = {}
    seen: dict[tuple[str, int], dict[str, list[tuple[str, ModelTask]]]] = {}   # group -> label -> regions
    for group, label, module, inputs, piece, ep, graph in _captures(m, batch, prompt_tokens, decode, prompt_ranges,
                                                                     notes):
        graph = canonical_export(ep, graph, m.name)      # as the backend will see it
        sem = semantic_nodes(graph)
        view = GraphView(canonical_graph(graph))
        specs = graph.spec_table
        from torch.export.graph_signature import InputKind
        params: dict[str, tuple[str, torch.Tensor]] = {}
        state = {**ep.state_dict, **getattr(ep, "constants", {})}
        for s in ep.graph_signature.input_specs:
            if s.kind in (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR) and s.target in state:
                params[s.arg.name] = (s.target, state[s.target])
        weights = weight_inputs(ep, inputs)     # a dynamo graph takes the model's weights as inputs
        for name, t in zip(ep.graph_signature.user_inputs, inputs):
            if name in weights:
                params[name] = (name, t.detach())
        users: dict[str, list[torch.fx.Node]] = {}
        for n in ep.graph.nodes:
            if n.op == "call_function" and not n.users and n.meta.get("val") is None:
                continue        # a runtime assertion: no data, not a use the backend sees
            for a in n.all_input_nodes:
                users.setdefault(a.name, []).append(n)
        masks = additive_masks(ep)
        constants = constant_nodes(ep)
        for region in partition(graph):
            names = [sem[i].name for i in region.nodes]
            flops = sum(node_flops(n, operand_specs(specs, n)) for n in graph.nodes if n.name in set(names))
            # a region that reads constants is a task twice: making them inside (where the backend
            # sees them constant, the match covers them) and reading them (where the same values
            # come from data: generate() builds the mask from its attention_mask input)
            variants = []
            for suffix, consts in (("", frozenset()), (" +constants", constants)):
                got = _region_task(ep, graph, view, names, params, users, masks, consts)
                if got is not None and all(got[0] != v[1][0] for v in variants):
                    variants.append((suffix, got))
            for suffix, (source, kinds) in variants:
                key = _program_key(source)
                where = f"{label}: {piece}{names[0]}..{names[-1]}{suffix}"
                if group is not None:
                    seen.setdefault(group, {}).setdefault(label, []).append(
                        (key, ModelTask("", source, kinds, [where], region.template, flops)))
                    continue
                if key in tasks:
                    tasks[key].occurrences.append(where)
                    tasks[key].flops += flops
                    continue
                tasks[key] = ModelTask("", source, kinds, [where], region.template, flops)
    hi = max_tokens or _kv_limit(m)
    for (kind, _), by_label in seen.items():
        xs = [_size_of(lb) for lb in by_label]
        if kind == "decode":        # (a KV length below the prompt's would not be a decode step after it)
            named = ("KV", f"1..{max(xs[0], hi - 1)}" if hi else None, False)
        else:                       # no known limit: the lengths captured
            named = ("TOKENS", f"1..{max(xs[-1], hi or 0)}", True)
        if len(xs) != 3:            # (generate() stopped short): nothing to fit a size on
            named = (named[0], None, named[2])
        for key, t in _sized_tasks(list(by_label.values()), xs, *named):
            if key in tasks:
                tasks[key].occurrences += t.occurrences
                tasks[key].flops += t.flops
            else:
                tasks[key] = t
    out = sorted(tasks.values(), key=lambda t: -t.flops)
    if max_tasks is not None:
        out = out[:max_tasks]
    for i, t in enumerate(out):
        short = "_".join(dict.fromkeys(k for k in t.kinds if k not in _VIEW_KINDS))[:40].strip("_")
        t.name = f"{_slug(m.name)}_{i:02d}_{short}"
    return out


def _captures(m: LoadedModel, batch: int, prompt_tokens: Sequence[int], decode: bool, prompt_ranges: bool,
              notes: list[str] | None) -> Iterator[tuple[Any, str, torch.nn.Module, list[torch.Tensor], str, Any, Any]]:
    """Each serving shape's exported graph as (group, label, module, inputs, piece, ep, graph)
    (``group``: :func:`_serving`'s); ``piece``
    is "" for a whole capture and "gK/" for the K-th graph dynamo splits a forward into, when
    torch.export cannot capture it whole (the failure stands when dynamo does not split it)."""
    from agentforge.torch.match import ModelCaptureError, export_graph

    for group, label, module, inputs in _serving(m, batch, prompt_tokens, decode, prompt_ranges):
        try:
            with torch.no_grad():
                ep, graph = export_graph(module, inputs, m.name)
            yield group, label, module, inputs, "", ep, graph
            continue
        except ModelCaptureError as whole:
            pieces = graph_pieces(module, inputs)
            if len(pieces) < 2:
                raise whole
        for k, (fn, tensors) in enumerate(pieces, 1):
            try:
                with torch.no_grad():
                    ep, graph = export_graph(fn, tensors, f"{m.name} ({label}, graph {k} of {len(pieces)})")
            except ModelCaptureError as e:
                if notes is not None:
                    notes.append(f"{label}: graph {k} of {len(pieces)} (split at a graph break) is left out, it runs "
                                 f"eagerly: {str(e).splitlines()[0]}")
                continue
            yield group, label, fn, tensors, f"g{k}/", ep, graph


def _program_key(source: str) -> str:
    """A task source without its docstring, its parameters' statistics and its own value of a
    symbolic size (``TOKENS = 16``): regions with the same key are the same program (every layer of
    a model shares its tasks; a program captured after two prompt lengths is one task)."""
    body = re.sub(r"\) \* [-0-9.e+]+ \+ [-0-9.e+]+\)  # .*", ")", source.split('"""', 2)[2])
    return re.sub(r"(?m)^(TOKENS|KV) = \d+\n", "", body)


def _size_of(label: str) -> int:
    """The size a capture label ends with: "decode 1x1 kv 17" -> 17, "prefill 1x16" -> 16."""
    return int(re.split(r"[ x]", label)[-1])


def _kv_limit(m: LoadedModel) -> int | None:
    """The longest sequence the model reads: its ``max_position_embeddings`` (None: unknown)."""
    cfg = getattr(m.module, "config", None)
    return getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)


def _sized_tasks(seen: list[list[tuple[str, ModelTask]]], xs: list[int], name: str, rng: str | None,
                 keep_literal: bool) -> list[tuple[str, ModelTask]]:
    """The tasks of one capture at three values ``xs`` of a size (KV lengths of the decode step, or
    prompt lengths; each capture's (key, task) in graph order). A region with the same program at
    all three is one task; one whose program changes with the size is written symbolic in ``name``
    (each literal that varies an affine function of it, :func:`agentforge.ranges.symbolize_sources`)
    with the range ``rng`` to verify its kernel over; regions are paired by where they are in the
    graph. A region that is neither (or any, without a range) is the task at ``xs[0]`` with
    ``keep_literal``, else left out (it runs eagerly: a decode step's KV length changes every token)."""
    from agentforge.ranges import symbolize_sources

    others = [{k for k, _ in s} for s in seen[1:]]
    where = [{t.occurrences[0].split(": ", 1)[1]: t for _, t in s} for s in seen]
    picked: list[tuple[str, ModelTask, list[str] | None]] = []   # (key, task, its literal keys at each x if symbolic)
    for key, t in seen[0]:
        if all(key in o for o in others):
            picked.append((key, t, None))
            continue
        loc = t.occurrences[0].split(": ", 1)[1]
        sym = None
        if rng is not None and all(loc in w for w in where[1:]):
            sym = symbolize_sources({x: w[loc].source for x, w in zip(xs, where)}, name)
        if sym is not None:
            picked.append((_program_key(sym), ModelTask("", sym, t.kinds, t.occurrences, t.template, t.flops,
                                                        {name: rng}), [_program_key(w[loc].source) for w in where]))
        elif keep_literal:
            picked.append((key, t, None))
    # the own value: the first size at which no two different programs are the same problem (at 16
    # tokens with a head dimension of 16, Q K^T and P V are: a library keeps one kernel per problem)
    own = next((i for i in range(len(xs)) if _distinct_at(picked, i)), 0)
    out = []
    for key, t, literal in picked:
        if literal is not None and own:
            loc = t.occurrences[0].split(": ", 1)[1]
            order = [xs[own], *(x for x in xs if x != xs[own])]
            srcs = {x: w[loc].source for x, w in zip(xs, where)}
            t.source = symbolize_sources({x: srcs[x] for x in order}, name) or t.source
        out.append((key, t))
    return out


def _distinct_at(picked: list[tuple[str, ModelTask, list[str] | None]], i: int) -> bool:
    """Whether the picked tasks, the symbolic ones at their ``i``-th captured size, are different
    problems wherever they are different programs."""
    programs: dict[str, str] = {}
    for key, _, literal in picked:
        at = literal[i] if literal is not None else key
        if programs.setdefault(at, key) != key:
            return False
    return True


def _slug(s: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", s.lower()).strip("_") or "model"


def _group(t: ModelTask) -> str:
    """The suite group (agentforge.tasks) closest to a region's ops."""
    kinds = set(t.kinds)
    if t.template in ("attention", "moe"):
        return t.template
    if kinds & {"mm", "addmm"}:
        return "gemm"
    if kinds & {"bmm", "baddbmm"}:
        return "bmm"
    if kinds & {"softmax", "log_softmax"}:
        return "softmax"
    if kinds & {"mean", "var", "rsqrt", "layer_norm"}:
        return "norm"
    if kinds & {"sum", "amax", "amin", "any", "all", "max", "min", "argmax", "argmin"}:
        return "reduction"
    return "elementwise"


def write_suite(tasks: list[ModelTask], folder: str | Path, model: str) -> Path:
    """Write the tasks as an ordinary suite (``<name>.py`` + a ``<name>.toml`` sidecar) and an
    ``index.json`` (where each task occurs in the model)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for t in tasks:
        (folder / f"{t.name}.py").write_text(t.source)
        desc = f"{model}: {t.template} region ({', '.join(t.kinds)}), {len(t.occurrences)} occurrence(s)"
        ranges = ("\n[ranges]\n" + "".join(f"{n} = \"{r}\"\n" for n, r in t.ranges.items())) if t.ranges else ""
        (folder / f"{t.name}.toml").write_text(f"[task]\ngroup = \"{_group(t)}\"\ndescription = {json.dumps(desc)}\n"
                                               f"{ranges}")
    (folder / "index.json").write_text(json.dumps(
        {"model": model, "tasks": [{"name": t.name, "template": t.template, "kinds": t.kinds, "flops": t.flops,
                                    "occurrences": t.occurrences} for t in tasks]}, indent=1))
    return folder


def from_model_suite(spec: str, out: str | Path, batch: int = 1, prompt_tokens: Sequence[int] = (16,),
                     max_tasks: int | None = None, decode: bool = False) -> tuple[Path, list[ModelTask]]:
    """Load ``spec``, capture it at its serving shapes, write its tasks to ``out``/suite."""
    m = load_model_spec(spec)
    tasks = model_tasks(m, batch, prompt_tokens, max_tasks, decode)
    if not tasks:
        raise ModelSpecError(f"{spec}: the model's graph has no region that computes anything")
    return write_suite(tasks, Path(out) / "suite", m.name), tasks


def _verify_ranges(library: Path, quiet: bool = False, workers: int = 1) -> list[dict[str, Any]]:
    """Verify the library's kernels of size-symbolic tasks (prompt length ``TOKENS``, KV length
    ``KV``) over their declared ranges (:func:`agentforge.ranges.verify_library_ranges`): the backend
    then runs them at every size in the range without verifying at call time (``workers`` kernels
    at once, as many as the campaign's workers). Prints one line (and,
    unless ``quiet``, each failed point); a kernel that fails keeps its own size set and runs
    eagerly at other sizes."""
    from agentforge.library import Library
    from agentforge.ranges import verify_library_ranges

    t0 = time.perf_counter()
    rows = [r for r in verify_library_ranges(Library.open(library), workers=workers) if r["verified"] is not None]
    ok = sum(1 for r in rows if r["verified"])
    spans = sorted({f"{n} {v}" for r in rows for n, v in r["ranges"].items()})
    print(f"ranges: {ok}/{len(rows)} kernels verified over their size ranges ({', '.join(spans)}) "
          f"in {time.perf_counter() - t0:.1f} s")
    if not quiet:
        for r in rows:
            for f in r["failed"] if not r["verified"] else []:
                print(f"  {r['op']} at {f['sizes']}: {f['reason']}")
    return rows


def _ints(text: str | None, default: Sequence[int], what: str) -> list[int]:
    if text is None:
        return list(default)
    try:
        got = [int(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        raise ModelSpecError(f"{what} {text!r}: not a comma-separated list of integers (e.g. 16,64)") from None
    if not got or any(x < 1 for x in got):
        raise ModelSpecError(f"{what} {text!r}: give one or more positive integers (e.g. 16,64)")
    return got


def cmd_campaign_from_model(args: Any) -> int:
    """``agentforge campaign --from-model SPEC``: write the model's tasks to OUT/suite, then run the
    campaign on them with OUT as the run directory (its library, OUT/library, covers the model)."""
    from agentforge.campaign import load_config, run_campaign
    from agentforge.campaign.console import CampaignView

    if args.suite:
        raise ModelSpecError("give either a SUITE folder or --from-model SPEC, not both")
    if args.resume:
        raise ModelSpecError("--resume with --from-model: resume the run folder itself instead: agentforge campaign "
                             "OUT/suite --out OUT --resume")
    batch = args.batch if args.batch is not None else 1
    if batch < 1:
        raise ModelSpecError(f"--batch {batch}: give a positive number of sequences")
    prompts = _ints(args.prompt_tokens, (16,), "--prompt-tokens")
    m = load_model_spec(args.from_model)
    out = Path(args.out or f"runs/{_slug(m.name)}-from-model")
    decode = bool(args.max_new_tokens) and m.example_inputs is None
    prompt_ranges = m.example_inputs is None and not getattr(args, "exact_prompts", False)
    notes: list[str] = []
    tasks = model_tasks(m, batch, prompts, decode=decode, prompt_ranges=prompt_ranges, notes=notes)
    for note in notes:
        print(f"note: {note}")
    if not tasks:
        raise ModelSpecError(f"{args.from_model}: the model's graph has no region that computes anything")
    suite = write_suite(tasks, out / "suite", m.name)
    regions = sum(len(t.occurrences) for t in tasks)
    print(f"{m.name}: {regions} regions at {', '.join(f'{batch}x{p}' for p in prompts)}{' and decode' if decode else ''}"
          f" -> {len(tasks)} distinct "
          f"tasks in {suite}")
    if args.max_new_tokens and not decode:
        print(f"note: --max-new-tokens {args.max_new_tokens}: the factory's model is captured at its example inputs "
              f"only (decode steps are captured for causal LMs from a config)")
    elif decode:
        print("decode: one token per sequence with a KV cache, the step as dynamo compiles it inside generate(); "
              "its regions over the cache are tasks symbolic in KV, verified over their KV range after the campaign")
    flags = {"suite": str(suite), "llm": args.llm, "machine": args.machine, "out": str(out), "workers": args.workers,
             "executor": args.executor, "ray_address": args.ray_address, "budget": args.budget,
             "attempts_per_task": args.attempts, "tasks": args.tasks, "task_timeout_s": args.task_timeout}
    cfg = load_config(**flags)
    view = CampaignView("jsonl" if args.jsonl else "quiet" if args.quiet else "rich")
    res = run_campaign(cfg, on_event=view, expect=None)
    view.summary(res)
    if any(t.ranges for t in tasks) and (out / "library" / "manifest.json").is_file():
        _verify_ranges(out / "library", quiet=bool(args.quiet or args.jsonl), workers=cfg.workers)
    print(f"use it: torch.compile(model, backend=\"agentforge\", options={{\"library\": \"{out / 'library'}\"}})")
    return 1 if res.status == "stopped" else 0
