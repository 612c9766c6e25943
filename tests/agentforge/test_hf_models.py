"""Real Hugging Face causal LMs, built tiny from configs (random weights, no downloads), compiled
with the agentforge backend: logits within 1e-4 of eager, greedy ``generate()`` gives the same
tokens, the parts the library covers (the SwiGLU MLP written as HF writes it, on [B, S, H]; the
MoE router) run on its kernels and nowhere else, and ``report()`` works on a causal LM (a
``DynamicCache`` in its outputs). Each test prints the compiled graphs' summaries (the offloaded
share). Skipped, saying why, where ``transformers`` is not installed (``pip install
'agentforge[hf]'``)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="transformers is not installed: pip install 'agentforge[hf]'")

from agentforge.torch._build import cached_library  # noqa: E402
from agentforge.torch.backend import compiled_graphs  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
#: a SwiGLU MLP task on [16 tokens, 64] -> 128: the tiny models' MLP, written as a task (2-D, x @ W^T)
TASKS = (str(ROOT / "tests" / "agentforge" / "fixtures" / "hf_tasks" / "swiglu_mlp_tokens.py"),)
COMMON = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=128)


def _llama():
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**COMMON))


def _qwen2():
    return transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**COMMON))


def _mixtral():
    return transformers.MixtralForCausalLM(transformers.MixtralConfig(**COMMON, num_local_experts=4,
                                                                      num_experts_per_tok=2))


def _gpt2():
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=256, n_embd=64, n_layer=2, n_head=4,
                                                                 n_positions=128))


#: model -> the library ops that must run in its compiled forward at input (1, 16)
MODELS = {"llama": (_llama, {"swiglu_mlp_tokens"}), "qwen2": (_qwen2, {"swiglu_mlp_tokens"}),
          "mixtral": (_mixtral, set()), "gpt2": (_gpt2, set())}


@pytest.fixture(scope="module")
def lib() -> str:
    return str(cached_library(TASKS))


def _build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return MODELS[name][0]().eval()


def _compile(model, lib):
    torch._dynamo.reset()
    return torch.compile(model, backend="agentforge", dynamic=False, options={"library": lib})


@pytest.mark.parametrize("name", sorted(MODELS))
def test_compiled_logits_match_eager_and_the_covered_blocks_run_on_kernels(lib, name, capsys):
    model = _build(name)
    ids = torch.randint(0, 256, (1, 16), generator=torch.Generator().manual_seed(1))
    before = {id(c) for c in compiled_graphs()}
    with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = _compile(model, lib)(ids).logits
        ref = model(ids).logits
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    graphs = [c for c in compiled_graphs() if id(c) not in before]
    assert graphs and all(c.error is None for c in graphs)
    ran = {r.family.op for c in graphs for r in c.plan.regions}
    assert MODELS[name][1] <= ran
    # quiet: no per-op warnings without verbose, one summary per graph instead
    assert not [w for w in caught if "agentforge" in str(w.message)]
    with capsys.disabled():
        for c in graphs:
            print(f"\n[{name}] {c.summary}")


def test_a_wrong_mlp_kernel_changes_a_compiled_llama(lib, monkeypatch):
    """The compiled Llama's logits come from the library's MLP kernel: poisoned, they change."""
    from agentforge.torch.ops import OpFamily

    real = OpFamily._run
    monkeypatch.setattr(OpFamily, "_run", lambda self, v, args: [torch.full_like(o, 7) for o in real(self, v, args)])
    model = _build("llama")
    ids = torch.randint(0, 256, (1, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = _compile(model, lib)(ids).logits
        ref = model(ids).logits
    assert not torch.allclose(out, ref, atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize("name", ["llama", "mixtral"])
def test_generate_gives_the_same_tokens_as_eager(lib, name):
    model = _build(name)
    ids = torch.randint(0, 256, (1, 16), generator=torch.Generator().manual_seed(2))
    kw = dict(max_new_tokens=3, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        ref = model.generate(ids, **kw)
        model.forward = _compile(model.forward, lib)          # generate() calls the compiled forward
        got = model.generate(ids, **kw)
    assert torch.equal(got, ref)
    torch._dynamo.reset()


def test_report_works_on_a_causal_lm(lib):
    from agentforge.torch.report import report

    model = _build("llama")
    ids = torch.randint(0, 256, (1, 16), generator=torch.Generator().manual_seed(1))
    r = report(model, [ids], library=lib)
    assert r.error is None and r.model == "LlamaForCausalLM"
    assert [x.op for x in r.regions] == ["torch.ops.rdu.swiglu_mlp_tokens"] * 2     # one MLP per layer
    assert "LlamaForCausalLM" in str(r)


@dataclass
class _Generated:
    model: torch.nn.Module
    forward: object                  # the model's own forward (before compiling)
    ids: torch.Tensor
    kw: dict
    ref: torch.Tensor                # eager tokens
    got: torch.Tensor                # tokens with the compiled forward
    dynamic: object                  # the one compiled graph dynamo made with a symbolic KV length


def _generate_compiled(lib: str) -> _Generated:
    """Tiny Llama's greedy generate() of 6 tokens, eagerly and with its forward compiled by the backend
    (dynamo's default: the decode step recompiled once with a symbolic KV length)."""
    model = _build("llama")
    ids = torch.randint(0, 256, (1, 16), generator=torch.Generator().manual_seed(2))
    kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    torch._dynamo.reset()
    before = {id(c) for c in compiled_graphs()}
    forward = model.forward
    with torch.no_grad():
        ref = model.generate(ids, **kw)
        model.forward = torch.compile(forward, backend="agentforge", options={"library": lib})
        got = model.generate(ids, **kw)
    (dynamic,) = [c for c in compiled_graphs() if id(c) not in before and c.dynamic is not None]
    return _Generated(model, forward, ids, kw, ref, got, dynamic)


def test_decode_is_planned_once_for_every_kv_length(lib):
    """generate() with a plain torch.compile: dynamo compiles the decode step once with a symbolic KV
    length; the backend plans that graph once (its KV-length-dependent ops eager, the rest matched
    once) and runs every later token on that plan, with the same tokens as eager."""
    run = _generate_compiled(lib)
    assert torch.equal(run.got, run.ref)
    c = run.dynamic
    assert c.calls >= 4 and not c.specializations and len(c.dynamic_specs) == 1    # one plan, every KV length
    (spec,) = c.dynamic_specs.values()
    assert spec.calls == c.calls and spec.plan is not None      # planning time: benchmarks/bench_models_hf.py
    kinds = {n.kind for n in spec.plan.graph.nodes}
    assert "bmm" in kinds and "softmax" in kinds                                   # the attention over the cache
    torch._dynamo.reset()


GUARD_KINDS = {"softmax", "amax", "ne", "logical_not", "full_like", "where", "any", "eq"}


@pytest.fixture(scope="module")
def guard_lib(tmp_path_factory) -> tuple[str, list]:
    """A library of the tiny Llama's masked-softmax tasks as `campaign --from-model` captures them
    (with the fully-masked-row guard SDPA's decomposition adds): each region twice, taking the
    causal mask as an input and making it inside (``+constants``), from torch.export's graph and
    from the graph dynamo hands the backend (HF builds the mask differently under each)."""
    from agentforge.torch._build import build_library
    from agentforge.torch.from_model import LoadedModel, model_tasks, write_suite

    tmp = tmp_path_factory.mktemp("guard")
    tasks = [t for t in model_tasks(LoadedModel("llama", _build("llama"), None, 256)) if "softmax" in t.kinds]
    suite = write_suite(tasks, tmp / "suite", "llama")
    _, notes = build_library([suite / f"{t.name}.py" for t in tasks], tmp / "library")
    assert not notes
    return str(tmp / "library"), tasks


def _eager_kinds(graphs) -> set[str]:
    return {e.kind for c in graphs for e in c.plan.eager if e.node not in c.plan.folded}


def _makes_its_constants(t) -> bool:
    return all(o.endswith(" +constants") for o in t.occurrences)


def test_the_sdpa_guard_is_inside_a_task_checked_on_fully_masked_rows(guard_lib):
    _, tasks = guard_lib
    assert len(tasks) == 4 and sum(map(_makes_its_constants, tasks)) == 2
    for t in tasks:
        assert {"softmax", "amax", "ne", "where", "full_like"} <= set(t.kinds) and "any" not in t.kinds
        inputs = t.source.split("def get_inputs():")[1]
        if _makes_its_constants(t):      # the causal mask from positions, in the kernel: only the scores come in
            assert "arange" in t.kinds and inputs.count("torch.randn") == 1 and "-inf" not in inputs
        else:                       # the additive mask as an input, checked with a fully masked row
            assert "float('-inf')" in inputs and "index_fill(-2" in inputs


def test_the_causal_mask_and_the_sdpa_guard_run_on_the_generated_kernel_not_eagerly(guard_lib, monkeypatch):
    """torch.compile's forward: the mask HF builds from positions is made by the kernel that adds it
    to the scores (each layer has its own copy, rematerialised as XLA does): nothing of the
    attention's softmax runs in PyTorch, not even once per plan (none of its ops folded)."""
    lib, tasks = guard_lib
    model = _build("llama")
    ids = torch.randint(0, 256, (1, 16), generator=torch.Generator().manual_seed(1))
    before = {id(c) for c in compiled_graphs()}
    with torch.no_grad():
        out = _compile(model, lib)(ids, use_cache=False).logits
        ref = model(ids, use_cache=False).logits
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    graphs = [c for c in compiled_graphs() if id(c) not in before]
    ran = [r.family.op for c in graphs for r in c.plan.regions]
    assert len(ran) == 2 and len(set(ran)) == 1                             # one per layer
    (task,) = [t for t in tasks if t.name == ran[0]]
    assert _makes_its_constants(task)
    assert not _eager_kinds(graphs) & (GUARD_KINDS | {"arange", "le", "sub", "logical_and"})
    folded = {n.kind for c in graphs for n in c.plan.graph.nodes if n.name in c.plan.folded}
    assert folded and not folded & {"le", "logical_and", "where", "full"}    # RoPE's positions only (no task here)
    from agentforge.torch.ops import OpFamily

    real = OpFamily._run
    monkeypatch.setattr(OpFamily, "_run", lambda self, v, args: [torch.full_like(o, 7) for o in real(self, v, args)])
    with torch.no_grad():
        bad = _compile(model, lib)(ids, use_cache=False).logits
    assert not torch.allclose(bad, ref, atol=1e-2, rtol=1e-2)
    torch._dynamo.reset()


def test_generate_with_the_guard_on_a_kernel_gives_eagers_tokens(guard_lib):
    """generate()'s prefill builds the mask from its attention_mask input (data): the variant that
    takes the mask as an input serves it."""
    lib, tasks = guard_lib
    model = _build("llama")
    ids = torch.randint(0, 256, (1, 16), generator=torch.Generator().manual_seed(2))
    kw = dict(max_new_tokens=2, do_sample=False, pad_token_id=0)
    before = {id(c) for c in compiled_graphs()}
    with torch.no_grad():
        ref = model.generate(ids, **kw)
        model.forward = _compile(model.forward, lib)
        got = model.generate(ids, **kw)
    assert torch.equal(got, ref)
    ran = {r.family.op for c in compiled_graphs() if id(c) not in before
           for s in c.specializations.values() if s.plan is not None for r in s.plan.regions}
    assert ran & {t.name for t in tasks}                            # the prefill's attention ran on one
    torch._dynamo.reset()


def test_a_value_read_outside_only_through_a_copy_is_a_task_output():
    """GPT-2's wte + wpe is read by the next residual add only through the clone ln_1's region pulls
    in: the add + layer_norm task must return the sum too, or the matcher refuses the region (the
    kernel would not return what the model reads) and the add runs eagerly at every call."""
    from agentforge.torch.from_model import LoadedModel, model_tasks

    tasks = [t for t in model_tasks(LoadedModel("gpt2", _build("gpt2"), None, 256))
             if t.kinds[:2] == ["add", "layer_norm"]]
    assert tasks
    ret = [ln.strip() for ln in tasks[0].source.splitlines() if ln.strip().startswith("return (")]
    assert ret and ret[0].startswith("return (v0, ")       # the add (v0) and the norm


@pytest.fixture(scope="module")
def experts_lib(tmp_path_factory):
    """A library of Mixtral's own expert tasks (``campaign --from-model``'s grouped matmuls)."""
    from agentforge.torch.from_model import LoadedModel, model_tasks, write_suite

    tasks = [t for t in model_tasks(LoadedModel("mixtral", _build("mixtral"), None, 256))
             if "grouped_mm_fallback" in t.kinds]
    suite = write_suite(tasks, tmp_path_factory.mktemp("mixtral_experts"), "mixtral")
    return str(cached_library(tuple(str(suite / f"{t.name}.py") for t in tasks))), tasks


def test_mixtral_experts_run_on_their_generated_kernels(experts_lib, monkeypatch):
    """Hugging Face's MoE experts (rows sorted by expert, ``grouped_mm_fallback`` with cumulative
    counts) become tasks that import the op's module and check valid routings, verify, and run in
    the compiled Mixtral: every grouped matmul on a kernel, logits equal to eager, and a poisoned
    kernel changes the logits."""
    from agentforge.torch.ops import OpFamily

    lib, tasks = experts_lib
    assert len(tasks) == 2                     # gate_up [64 -> 256] and down [128 -> 64], both layers each
    for t in tasks:
        assert "import transformers.integrations.moe" in t.source and ".sort().values" in t.source
    model = _build("mixtral")
    ids = torch.randint(0, 256, (1, 16), generator=torch.Generator().manual_seed(1))
    before = {id(c) for c in compiled_graphs()}
    with torch.no_grad():
        out = _compile(model, lib)(ids).logits
        ref = model(ids).logits
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    plans = [c.plan for c in compiled_graphs() if id(c) not in before]
    ran = [r.family.op for p in plans for r in p.regions]
    assert sorted(ran) == sorted(t.name for t in tasks for _ in range(2))     # 2 layers
    assert not [e for p in plans for e in p.eager if "grouped_mm" in e.kind]
    real = OpFamily._run
    monkeypatch.setattr(OpFamily, "_run", lambda self, v, args: [torch.full_like(o, 7) for o in real(self, v, args)])
    with torch.no_grad():
        poisoned = _compile(model, lib)(ids).logits
    assert not torch.allclose(poisoned, ref, atol=1e-2, rtol=1e-2)
    torch._dynamo.reset()


@pytest.fixture(scope="module")
def kv_lib(tmp_path_factory):
    """A library of Llama's decode tasks whose program depends on the KV length (from-model writes
    them symbolic in KV with a [ranges] sidecar), each kernel verified over KV 1..127."""
    from agentforge.library import Library
    from agentforge.ranges import verify_library_ranges
    from agentforge.torch._build import build_library
    from agentforge.torch.from_model import LoadedModel, model_tasks, write_suite

    tasks = [t for t in model_tasks(LoadedModel("llama", _build("llama"), None, 256), decode=True) if t.ranges]
    suite = write_suite(tasks, tmp_path_factory.mktemp("kv_suite"), "llama")
    out = tmp_path_factory.mktemp("kv_lib") / "library"
    build_library([suite / f"{t.name}.py" for t in tasks], out)
    rows = verify_library_ranges(Library.open(out))
    return str(out), tasks, rows


def test_decode_tasks_over_the_kv_cache_are_symbolic_and_verified_over_a_range(kv_lib):
    _, tasks, rows = kv_lib
    kinds = {k for t in tasks for k in t.kinds}
    assert {"bmm", "cat", "softmax"} <= kinds         # attention over the cache (its masked softmax), the cache update
    for t in tasks:
        # a size, own value 17: the steps are the graph dynamo recompiled with a symbolic KV length
        # (the first decode step, over the 16 prompt tokens, is compiled static)
        assert t.ranges == {"KV": "1..127"} and "\nKV = 17\n" in t.source
        forward, inputs = t.source.split("def get_inputs", 1)
        if _makes_its_constants(t):       # the step's position made inside (arange(0, 1) + KV): a scalar
            assert "arange" in t.kinds and "KV)" in forward
        else:
            assert "KV" in inputs                                                    # the inputs' shapes use it
    assert rows and all(r["verified"] for r in rows), [r for r in rows if not r["verified"]]


def test_decode_over_the_kv_cache_runs_on_range_verified_kernels_planned_once(kv_lib, monkeypatch):
    """generate(): the decode step is planned once with a symbolic KV length and its attention
    matmuls and cache update run on kernels picked per call inside their verified KV range (no
    plan per KV length, no call-time verification); tokens equal eager; a poisoned kernel changes them."""
    from agentforge.torch.ops import OpFamily

    lib, tasks, _ = kv_lib
    run = _generate_compiled(lib)
    assert torch.equal(run.got, run.ref)
    c = run.dynamic
    assert not c.specializations and len(c.dynamic_specs) == 1          # one plan for every KV length
    (spec,) = c.dynamic_specs.values()
    dyn = [r for r in spec.plan.regions if r.dynamic is not None]
    assert {r.family.op for r in dyn} >= {t.name for t in tasks if {"bmm", "softmax"} & set(t.kinds)}
    # the tasks are the graph dynamo hands the backend: the attention over the cache, its masked
    # softmax included, runs on kernels (this library holds only the KV tasks: the rest is eager)
    eager = {e.kind for e in spec.plan.eager if not e.view}
    assert not eager & {"bmm", "softmax", "amax", "where"}, eager
    assert spec.calls == c.calls >= 4
    real = OpFamily._run
    monkeypatch.setattr(OpFamily, "_run", lambda self, v, args: [torch.full_like(o, 7) for o in real(self, v, args)])
    torch._dynamo.reset()
    with torch.no_grad():
        run.model.forward = torch.compile(run.forward, backend="agentforge", options={"library": lib})
        poisoned = run.model.generate(run.ids, **run.kw)
    assert not torch.equal(poisoned, run.ref)
    torch._dynamo.reset()


def test_a_cache_laid_out_otherwise_is_not_fed_to_the_kv_kernel_reshaped(kv_lib):
    """A KV cache kept as [H, D, s] (keys transposed) with the same element counts as the task's
    [1, H, KV, D] cache update: the dynamic match compares shapes and scalars with the task at the
    bound sizes, not element counts only, so the concatenation runs eagerly and stays right."""
    lib, _, _ = kv_lib

    class Transposed(torch.nn.Module):
        def forward(self, past, new):
            return torch.cat([past, new], dim=2) * 2.0

    new = torch.randn(2, 16, 1)
    torch._dynamo.reset()
    before = {id(c) for c in compiled_graphs()}
    f = torch.compile(Transposed(), backend="agentforge", options={"library": lib})
    for s in (17, 18, 19):
        p = torch.randn(2, 16, s)
        torch._dynamo.mark_dynamic(p, 2)
        with torch.no_grad():
            torch.testing.assert_close(f(p, new), Transposed()(p, new))
    regions = [r for c in compiled_graphs() if id(c) not in before
               for sp in [*c.dynamic_specs.values(), *c.specializations.values()] if sp.plan is not None
               for r in sp.plan.regions]
    assert not [r for r in regions if r.dynamic is not None]
    torch._dynamo.reset()


@pytest.fixture(scope="module")
def tokens_lib(tmp_path_factory):
    """Llama's MLP tasks as `campaign --from-model` writes them by default: captured at 16, 17 and
    18 prompt tokens, symbolic in TOKENS with [ranges] TOKENS = "1..128", each kernel verified over
    the range: the SiLU-gated projection and its product with the up projection."""
    from agentforge.library import Library
    from agentforge.ranges import verify_library_ranges
    from agentforge.torch._build import build_library
    from agentforge.torch.from_model import LoadedModel, model_tasks, write_suite

    tasks = [t for t in model_tasks(LoadedModel("llama", _build("llama"), None, 256), prompt_ranges=True)
             if [k for k in t.kinds if k not in ("permute", "view")] in (["mm", "sigmoid", "mul"], ["mm", "mul"])]
    suite = write_suite(tasks, tmp_path_factory.mktemp("tokens_suite"), "llama")
    out = tmp_path_factory.mktemp("tokens_lib") / "library"
    build_library([suite / f"{t.name}.py" for t in tasks], out)
    return str(out), tasks, verify_library_ranges(Library.open(out))


def test_prefill_kernels_are_symbolic_in_the_prompt_length_and_verified_over_its_range(tokens_lib):
    _, tasks, rows = tokens_lib
    assert len(tasks) == 2
    for t in tasks:
        # own value 17, not the 16 asked for: at 16 tokens the attention's Q K^T and P V are one
        # problem (head dimension 16) and a library keeps one kernel per problem
        assert t.ranges == {"TOKENS": "1..128"} and "\nTOKENS = 17\n" in t.source
        assert "TOKENS" in t.source.split("def get_inputs", 1)[1]
    assert rows and all(r["verified"] for r in rows), [r for r in rows if not r["verified"]]


def test_different_programs_are_different_problems_at_their_own_sizes():
    """Q K^T [4, T, 16] x [4, 16, T] and P V [4, T, T] x [4, T, 16] are one problem at T = 16: the
    symbolic tasks' own value is chosen where no two programs coincide, so the library keeps a
    kernel for each (it keeps one per problem) and both serve other prompt lengths."""
    from agentforge.capture import capture_at, signature
    from agentforge.tasks import load_task
    from agentforge.torch.from_model import LoadedModel, model_tasks, write_suite

    tasks = model_tasks(LoadedModel("llama", _build("llama"), None, 256), prompt_ranges=True)
    bmm = [t for t in tasks if "bmm" in t.kinds and t.ranges]
    assert len(bmm) == 2
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        suite = write_suite(tasks, d, "llama")
        keys = {t.name: signature(capture_at(load_task(suite / f"{t.name}.py"), meta=True)).sized_key()
                for t in tasks}
    assert len(set(keys.values())) == len(tasks), keys


@pytest.mark.parametrize("prompt", [5, 23])
def test_a_prompt_length_never_captured_runs_on_the_range_verified_kernels(tokens_lib, prompt, monkeypatch):
    """A prompt of 5 or 23 tokens (the campaign captured 16, 17 and 18): the MLP runs on the kernels
    verified over TOKENS 1..128, with no verification at call time; logits equal eager; a poisoned
    kernel changes them."""
    from agentforge.torch.ops import OpFamily

    lib, tasks, _ = tokens_lib
    model = _build("llama")
    ids = torch.randint(0, 256, (1, prompt), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = model(ids, use_cache=False).logits
        got = _compile(model, lib)(ids, use_cache=False).logits
    assert (got - ref).abs().max() < 1e-4
    (graph,) = [c for c in compiled_graphs() if c.plan is not None and c.calls][-1:]
    assert {r.family.op for r in graph.plan.regions} == {t.name for t in tasks}
    assert all(r.verified.how == "verified range TOKENS=1..128" for r in graph.plan.regions)   # not at call time
    real = OpFamily._run
    monkeypatch.setattr(OpFamily, "_run", lambda self, v, args: [torch.full_like(o, 7) for o in real(self, v, args)])
    with torch.no_grad():
        poisoned = _compile(model, lib)(ids, use_cache=False).logits
    assert not torch.allclose(poisoned, ref)
    torch._dynamo.reset()


def test_prompt_lengths_within_two_of_each_other_keep_their_prefill_and_decode_groups_apart():
    """--prompt-tokens 4,5 captures 4-6 and 5-7 tokens (and decode after each): each group is fitted
    on its own captures, so the decode tasks over the cache are still symbolic in KV."""
    from agentforge.torch.from_model import LoadedModel, model_tasks

    tasks = model_tasks(LoadedModel("llama", _build("llama"), None, 256), prompt_tokens=(4, 5), decode=True,
                        prompt_ranges=True)
    assert sum("KV" in t.ranges for t in tasks) >= 5 and sum("TOKENS" in t.ranges for t in tasks) >= 15
    sym = [t for t in tasks if t.ranges]
    import re
    assert len({re.sub(r"(?m)^(TOKENS|KV) = \d+$", "", t.source) for t in sym}) == len(sym)   # one task per program
    torch._dynamo.reset()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["llama", "qwen2", "mixtral", "gpt2"])
def test_campaign_from_model_writes_a_library_that_runs_the_model(name, tmp_path):
    """The user's path whole: `agentforge campaign --from-model CONFIG.json` on the model's config
    (prefill at 16 tokens and the decode step), then torch.compile with the library it wrote: logits
    within 1e-4 of eager, generate() gives eager's tokens, and at least 90% of the forward's FLOPs
    and 80% of its non-view ops (constants included: positions, the causal mask) run on the
    generated kernels; for Mixtral the experts and the router among them. The share is printed
    (benchmarks/bench_models_hf.py measures the same with the prompt-length ranges too)."""
    import json
    import sys

    from agentforge.cli import main

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench_models_hf as bench

    cfg = tmp_path / f"{name}.json"
    cfg.write_text(json.dumps(bench.CONFIGS[name]))
    run = tmp_path / "run"
    assert main(["campaign", "--from-model", str(cfg), "--out", str(run), "--quiet", "--prompt-tokens", "16",
                 "--max-new-tokens", "2", "--exact-prompts", "--workers", "2"]) == 0
    row = bench.bench(name, bench.tiny_models()[name], str(run / "library"), 16, {}, new_tokens=2)
    print(f"\n[{name} from-model] non-view ops on kernels {row['offloaded_ops']}/{row['ops']} "
          f"({row['ops_share']:.1%}), FLOPs {row['flops_share']:.2%}, max abs error {row['max_abs_err']:.1e}")
    assert row["max_abs_err"] < 1e-4 and row["generate"]["tokens_equal_eager"]
    assert row["flops_share"] >= 0.9 and row["ops_share"] >= 0.8, row["eager_by_reason"]
    if name == "mixtral":
        ops = " ".join(row["library_ops"])
        assert "grouped_mm" in ops and "softmax_topk" in ops, ops        # the experts and the router
