"""Whole-model estimates on a node of sockets: decode tokens/s per user, time to first token,
and model switching between models kept in DDR.

Why: the library is verified and timed kernel by kernel on one socket; a user who wants to
know what it does for a real model (Llama-3.1 405B on 16 sockets) cannot run that model on the
emulator. This module builds one socket's shard of a decoder layer as a PyTorch module at the
model's real sizes on the ``meta`` device (shapes only, no memory), lets the offline author
(agentforge.author) fuse and tune it into ASP kernels, times those kernels with the
emulator's analytic timing model (no data), and adds what the single-socket model does not
know: the tensor-parallel collectives (asp_lang.node), the layers, the lm head, and loads of
weights between memories. Every layer of a model has the same shapes, so one layer is timed
and multiplied; a Llama-3.1 405B estimate takes seconds.

Tensor parallelism over N sockets (Megatron style):
- attention by heads: each socket has ceil(H/N) query heads and ceil(KV/N) KV heads (GQA; when
  N > KV a KV head is replicated on N/KV sockets), q/k/v projections split by columns, the
  output projection by rows, then one all-reduce of the hidden state;
- MLP: gate/up split by columns (one merged weight, as serving engines keep it), down by rows,
  then one all-reduce;
- lm head split by vocabulary, then an all-gather of the logits; the embedding is a row gather.

At decode with one user (batch 1) a socket's whole layer is instead ONE generated kernel
(agentforge.shard.decoder_layer_source: norms, q/k/v by heads, RoPE, GQA against the cache,
o projection, all-reduce, residual, SwiGLU, all-reduce, residual), timed by both of asp_lang's
timing models and charged the slower: the author's chain of ~15 kernels pays an HBM round trip
per kernel boundary, which at 16 sockets is as long as the 8B shard's weight streaming
(``layer="author"`` keeps the chain; prefill and the lm head always use the author's kernels).

Assumptions (docs/multisocket.md says how to read them):
- ``reconfig="resident"`` (default): a decoder layer's kernels are configured once and reused by
  every layer (the SN40L paper's fused decoder); kernel boundaries cost their pipeline fill
  (inside each kernel's time), not a reconfiguration. ``"chain"`` charges the reconfiguration
  the emulator charges between the author's kernels (what today's chain costs as is).
- ``weight_dtype`` fp8/int8: the emulator has no 8-bit types; kernels are timed with bf16
  weights and each memory-bound kernel's time is scaled down by the weight bytes it no longer
  reads (its achieved bandwidth kept); compute-bound kernels keep their time.
- ``spec_accept`` K >= 1: speculative decoding; each target step verifies ceil(K) tokens per
  user and keeps K on average; the draft model's time is not charged (an upper bound).
- A decode step with one query row in all (batch 1, K = 1) is timed with two query rows of the
  same user: the author's row partitioner does not fuse a one-row graph, and the second row
  adds only 2 x hidden bytes of activations (weights and KV cache are read once either way).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from types import SimpleNamespace

from .errors import AgentforgeError

WEIGHT_BYTES = {"bf16": 2.0, "fp8": 1.0, "int8": 1.0}
TORCH_DTYPES = {"bfloat16": "bf16", "float16": "f16", "float32": "f32", "bf16": "bf16", "fp16": "f16", "f16": "f16",
                "fp32": "f32", "f32": "f32"}
REQUIRED = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")


class ConfigError(AgentforgeError):
    """A model config (config.json) or an estimate setting is wrong; the message names the field."""


@dataclass(frozen=True)
class ModelConfig:
    """The shape of a Llama-style decoder-only model (what a HF config.json says)."""
    name: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    dtype: str = "bf16"
    tied_embeddings: bool = False

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def layer_params(self) -> int:
        hd = self.head_dim
        attn = self.hidden * (self.heads * hd + 2 * self.kv_heads * hd) + self.heads * hd * self.hidden
        return attn + 3 * self.hidden * self.intermediate + 2 * self.hidden

    @property
    def params(self) -> int:
        emb = self.vocab * self.hidden * (1 if self.tied_embeddings else 2)
        return self.layers * self.layer_params + emb + self.hidden

    def weight_bytes(self, weight_dtype: str = "bf16") -> float:
        return self.params * WEIGHT_BYTES[weight_dtype]


def bundled_models() -> list[str]:
    d = resources.files("agentforge").joinpath("models")
    return sorted(p.name[:-5] for p in d.iterdir() if p.name.endswith(".json"))


def model_from_dict(d: dict, origin: str = "<config>") -> ModelConfig:
    """Validate a HF-style config; every message names the field and says what to fix."""
    def bad(field: str, why: str) -> ConfigError:
        return ConfigError(f"{origin}: {field} {why}")
    if not isinstance(d, dict):
        raise ConfigError(f"{origin}: a model config is a JSON object (Hugging Face config.json)")
    vals = {}
    for f in REQUIRED + ("num_key_value_heads",):
        if f not in d:
            if f == "num_key_value_heads":
                continue
            raise bad(f, "is missing (a Llama-style config.json needs " + ", ".join(REQUIRED) + ")")
        v = d[f]
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise bad(f, f"must be a positive integer, got {v!r}")
        vals[f] = v
    heads = vals["num_attention_heads"]
    kv = vals.get("num_key_value_heads", heads)
    if vals["hidden_size"] % heads:
        raise bad("num_attention_heads", f"({heads}) must divide hidden_size ({vals['hidden_size']})")
    if heads % kv:
        raise bad("num_key_value_heads", f"({kv}) must divide num_attention_heads ({heads})")
    if (vals["hidden_size"] // heads) % 2:
        raise bad("num_attention_heads", "gives an odd head dimension; rotary embeddings need an even one")
    dt = d.get("torch_dtype", "bfloat16")
    if dt not in TORCH_DTYPES:
        raise bad("torch_dtype", f"must be one of {', '.join(sorted(TORCH_DTYPES))}, got {dt!r}")
    tied = d.get("tie_word_embeddings", False)
    if not isinstance(tied, bool):
        raise bad("tie_word_embeddings", f"must be true or false, got {tied!r}")
    name = str(d.get("_name_or_path") or d.get("name") or origin)
    return ModelConfig(name, vals["hidden_size"], vals["intermediate_size"], vals["num_hidden_layers"], heads, kv,
                       vals["vocab_size"], TORCH_DTYPES[dt], tied)


def load_model(name_or_path: str | Path) -> ModelConfig:
    """A bundled model (``llama-3.1-8b``, ``-70b``, ``-405b``, ``llama-2-7b``) or a config.json."""
    s = str(name_or_path)
    if s in bundled_models():
        d = json.loads(resources.files("agentforge").joinpath("models", f"{s}.json").read_text())
        d.setdefault("name", s)
        return model_from_dict(d, s)
    p = Path(s)
    if p.is_dir() and (p / "config.json").is_file():
        p = p / "config.json"
    if not p.is_file():
        raise ConfigError(f"{s}: not a bundled model ({', '.join(bundled_models())}) or a config.json file")
    try:
        d = json.loads(p.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{p}: not a JSON config ({e})") from None
    if isinstance(d, dict):
        d.setdefault("name", p.parent.name if p.name == "config.json" else p.stem)
    return model_from_dict(d, str(p))


# ------------------------------------------------------------------ the shard modules

def _modules():
    """The PyTorch modules of one socket's shard (built lazily: torch is slow to import)."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    def rms(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * w

    def rot(x):
        h = x.shape[-1] // 2
        return torch.cat((-x[..., h:], x[..., :h]), dim=-1)

    class AttentionShard(nn.Module):
        """RMSNorm, q/k/v projections (column shards), RoPE, attention, o projection (row shard).
        ``cached``: decode (the new tokens attend to a KV cache input, GQA by grouping the query
        heads of a KV head: the cache is read once; K is cached transposed, [b, kv, hd, ctx], as
        serving kernels keep it, so no kernel transposes the cache); else prefill (causal over
        the prompt)."""

        def __init__(self, hidden, hl, kvl, hd, cached):
            super().__init__()
            self.hl, self.kvl, self.hd, self.cached = hl, kvl, hd, cached
            self.norm = nn.Parameter(torch.ones(hidden))
            self.q_proj = nn.Linear(hidden, hl * hd, bias=False)
            self.k_proj = nn.Linear(hidden, kvl * hd, bias=False)
            self.v_proj = nn.Linear(hidden, kvl * hd, bias=False)
            self.o_proj = nn.Linear(hl * hd, hidden, bias=False)

        def forward(self, x, cos, sin, *cache):
            b, t, _ = x.shape
            hl, kvl, hd = self.hl, self.kvl, self.hd
            h = rms(x, self.norm)
            q = self.q_proj(h).view(b, t, hl, hd).transpose(1, 2)
            k = self.k_proj(h).view(b, t, kvl, hd).transpose(1, 2)
            v = self.v_proj(h).view(b, t, kvl, hd).transpose(1, 2)
            q = q * cos + rot(q) * sin
            k = k * cos + rot(k) * sin
            g = hl // kvl
            if self.cached:
                kct, vc = cache
                qg = q.reshape(b, kvl, g * t, hd)
                s = torch.matmul(qg, kct) * hd ** -0.5
                a = torch.matmul(torch.softmax(s, dim=-1), vc).reshape(b, hl, t, hd)
            else:
                kr = k[:, :, None].expand(b, kvl, g, t, hd).reshape(b, hl, t, hd)
                vr = v[:, :, None].expand(b, kvl, g, t, hd).reshape(b, hl, t, hd)
                s = torch.matmul(q, kr.transpose(-2, -1)) * hd ** -0.5
                mask = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)
                a = torch.matmul(torch.softmax(s.masked_fill(mask, float("-inf")), dim=-1), vr)
            a = a.transpose(1, 2).reshape(b, t, hl * hd)
            return self.o_proj(a), k, v   # k, v: the new cache entries (written to HBM)

    class MlpShard(nn.Module):
        """RMSNorm, SwiGLU with gate/up column shards and the down projection's row shard. The
        gate and up shards are one [hidden, 2 x il] weight (as serving engines merge them): one
        matmul kernel streams both."""

        def __init__(self, hidden, il):
            super().__init__()
            self.il = il
            self.norm = nn.Parameter(torch.ones(hidden))
            self.gate_up_proj = nn.Linear(hidden, 2 * il, bias=False)
            self.down_proj = nn.Linear(il, hidden, bias=False)

        def forward(self, x):
            gu = self.gate_up_proj(rms(x, self.norm))
            return self.down_proj(F.silu(gu[..., :self.il]) * gu[..., self.il:])

    class HeadShard(nn.Module):
        """The final RMSNorm and the lm head's vocabulary shard."""

        def __init__(self, hidden, vl):
            super().__init__()
            self.norm = nn.Parameter(torch.ones(hidden))
            self.lm_head = nn.Linear(hidden, vl, bias=False)

        def forward(self, x):
            return self.lm_head(rms(x, self.norm))

    return torch, AttentionShard, MlpShard, HeadShard


_TIMED: dict[tuple, list[dict]] = {}


def _timed_kernels(kind: str, shape: tuple, dtype: str, machine) -> list[dict]:
    """Author, tune and time one shard module at its real sizes (meta tensors, no data).

    Returns one row per kernel: seconds, HBM bytes, weight bytes (bf16), bottleneck."""
    key = (kind, shape, dtype, machine)
    if key in _TIMED:
        return _TIMED[key]
    import asp_lang
    from .author import author_plan, realize
    from .capture import capture
    from .lowering import Alias, OpKernel

    torch, AttentionShard, MlpShard, HeadShard = _modules()
    tdt = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}[dtype]
    with torch.device("meta"):
        if kind == "attention":
            hidden, hl, kvl, hd, b, t, ctx = shape
            mod = AttentionShard(hidden, hl, kvl, hd, cached=ctx > 0)
            ins = [torch.empty(b, t, hidden), torch.empty(t, hd), torch.empty(t, hd)]
            if ctx > 0:
                ins += [torch.empty(b, kvl, hd, ctx), torch.empty(b, kvl, ctx, hd)]
        elif kind == "mlp":
            hidden, il, b, t = shape
            mod, ins = MlpShard(hidden, il), [torch.empty(b, t, hidden)]
        else:
            hidden, vl, b, t = shape
            mod, ins = HeadShard(hidden, vl), [torch.empty(b, t, hidden)]
        mod = mod.to(tdt)
        ins = [i.to(tdt) for i in ins]
        inst = SimpleNamespace(task=SimpleNamespace(name=f"{kind}_shard", path=f"<estimate {kind}>"),
                               model=mod, inputs=ins)
        graph = capture(inst)
    tuned = author_plan(graph, machine)
    chain = realize(tuned.plan, graph, machine)
    params = {p.name: p.nbytes for p in graph.params}
    alias = {s.output: s.source for s in chain.steps if isinstance(s, Alias)}
    rows = []
    for i, step in enumerate(chain.steps):
        if not isinstance(step, OpKernel):
            continue
        rep = asp_lang.profile(chain.program(i, step))
        wbytes = 0.0
        for name in set(step.inputs):
            while name in alias and name not in params:
                name = alias[name]
            wbytes += params.get(name, 0.0)
        rows.append({"kernel": step.node, "op": step.target, "seconds": rep.seconds, "hbm_bytes": rep.hbm_bytes,
                     "weight_bytes": wbytes, "bottleneck": rep.bottleneck, "flops": rep.flops})
    _TIMED[key] = rows
    return rows


def _scaled(rows: list[dict], weight_dtype: str) -> float:
    """Seconds of a kernel chain with weights of ``weight_dtype`` (bf16-timed rows, see module doc)."""
    ratio = WEIGHT_BYTES[weight_dtype] / 2.0
    total = 0.0
    for r in rows:
        s = r["seconds"]
        if ratio < 1 and r["weight_bytes"] and r["hbm_bytes"] and "hbm" in str(r["bottleneck"]):
            s *= 1.0 - min(1.0, r["weight_bytes"] / r["hbm_bytes"]) * (1.0 - ratio)
        total += s
    return total


_FUSED: dict[tuple, dict] = {}
# the weights the fused layer may prefetch on chip, tried in turn (agentforge.shard.PREFETCHABLE)
FUSED_PREFETCH = ((), ("wg", "wu"), ("wg", "wu", "wd"), ("wo", "wg", "wu", "wd"))


def _fused_layer(model: ModelConfig, node, n: int, tokens: int, ctx: int) -> dict | None:
    """Time one socket's whole decoder layer at decode as ONE generated tensor-parallel ASP kernel
    (agentforge.shard.decoder_layer_source) on ``n`` sockets of ``node``.

    Why: the author's chain of a shard is ~15 kernels per layer, and every kernel boundary costs
    an HBM write and read latency (~0.8 us on sn40l) that, at 16 sockets, is as long as a small
    model's per-kernel weight streaming. One kernel keeps activations on chip and streams all the
    layer's weights in parallel loads; its two all-reduces are operators inside it, charged by
    the node's link model. The variants of ``FUSED_PREFETCH`` are timed (none, or some of the
    o-projection and MLP weights prefetched into on-chip buffers, so they stream during the
    attention half and its all-reduce instead of stalling behind full FIFOs), each by the fast
    model AND the event model; a variant is charged the slower of the two (the fast model does
    not see FIFO back-pressure) and the cheapest charged variant is kept. ``None`` when no
    variant fits the socket.

    The kernel is generated at the group's head counts: when ``n`` exceeds the KV heads, each
    socket keeps one replicated KV head (``kv_heads = kvl x n``), so every socket's program has
    exactly its real shard's shapes."""
    import asp_lang
    from .shard import decoder_layer_source
    key = (model.hidden, model.heads, model.kv_heads, model.head_dim, model.intermediate, n, tokens, ctx, node)
    if key in _FUSED:
        return _FUSED[key]
    hl, kvl, il = -(-model.heads // n), max(1, -(-model.kv_heads // n)), -(-model.intermediate // n)
    hl = kvl * -(-hl // kvl)
    m = node.socket
    variants = []
    for prefetch in FUSED_PREFETCH:
        src = decoder_layer_source(tokens, model.hidden, hl * n, kvl * n, model.head_dim, il * n, ctx, n,
                                   prefetch=prefetch)
        try:
            prog = asp_lang.compile(src, machine=m, node=node.with_sockets(n) if n > 1 else None,
                                    filename=f"<estimate decoder_layer tp{n}>")
            fast, event = asp_lang.profile(prog), asp_lang.simulate(prog)
        except asp_lang.AspError:   # e.g. the prefetch buffer does not fit this socket's SRAM
            continue
        charged = fast if fast.seconds >= event.seconds else event
        variants.append((charged.seconds, prefetch, fast, event, charged))
    if not variants:
        _FUSED[key] = None
        return None
    seconds, prefetch, fast, event, rep = min(variants, key=lambda v: v[0])
    clock = m.clock_ghz * 1e9
    act = tokens * model.hidden * 2.0
    ar = node.all_reduce_s(act, n) if n > 1 else 0.0
    # the split into attention and MLP halves reads the event model's schedule (when the first
    # all-reduce delivered); it is a reading of the charged time, whose parts add up to it
    ars = sorted((o for o in event.ops if o.op == "all_reduce"), key=lambda o: o.index)
    first = ars[0].finish_cycles / clock if ars else seconds / 2
    attention = min(max(0.0, first - ar), max(0.0, seconds - 2 * ar))
    wbytes = 2.0 * (model.hidden * (hl + 2 * kvl) * model.head_dim + hl * model.head_dim * model.hidden
                    + 3 * model.hidden * il + 2 * model.hidden)
    out = {"seconds": seconds, "fast_s": fast.seconds, "event_s": event.seconds,
           "model": "fast" if rep is fast else "event", "prefetch": prefetch, "sections": rep.sections,
           "attention_s": attention, "mlp_s": seconds - 2 * ar - attention, "all_reduce_s": 2 * ar,
           "hbm_bytes": rep.hbm_bytes / max(1, n), "weight_bytes": wbytes, "bottleneck": rep.bottleneck,
           "heads": hl, "kv_heads": kvl, "intermediate": il}
    _FUSED[key] = out
    return out


# ------------------------------------------------------------------ the estimate

@dataclass
class Settings:
    sockets: int
    batch: int = 1
    prompt_tokens: int = 1024
    weight_dtype: str = "bf16"
    spec_accept: float = 1.0
    reconfig: str = "resident"
    pipeline: int = 1
    layer: str = "fused"

    @property
    def tp(self) -> int:
        """Sockets per pipeline stage: the tensor-parallel degree."""
        return self.sockets // self.pipeline

    def check(self, node) -> None:
        if not isinstance(self.sockets, int) or not 1 <= self.sockets <= node.sockets:
            raise ConfigError(f"--sockets must be 1..{node.sockets} on {node.name}, got {self.sockets}")
        if not isinstance(self.batch, int) or self.batch < 1:
            raise ConfigError(f"--batch must be a positive integer, got {self.batch}")
        if not isinstance(self.prompt_tokens, int) or self.prompt_tokens < 1:
            raise ConfigError(f"--prompt-tokens must be a positive integer, got {self.prompt_tokens}")
        if self.weight_dtype not in WEIGHT_BYTES:
            raise ConfigError(f"--weight-dtype must be one of {', '.join(WEIGHT_BYTES)}, got {self.weight_dtype!r}")
        if not (isinstance(self.spec_accept, (int, float)) and 1.0 <= self.spec_accept <= 16.0):
            raise ConfigError(f"--spec-accept (tokens kept per target step) must be in 1..16, got {self.spec_accept}")
        if self.reconfig not in ("resident", "chain"):
            raise ConfigError(f"--reconfig must be resident or chain, got {self.reconfig!r}")
        if self.layer not in ("fused", "author"):
            raise ConfigError(f"layer must be fused or author, got {self.layer!r}")
        if not isinstance(self.pipeline, int) or self.pipeline < 1 or self.sockets % self.pipeline:
            raise ConfigError(f"--pipeline must be a positive divisor of --sockets ({self.sockets}), got {self.pipeline}")


def weight_streaming_bound(model: ModelConfig, node, sockets: int, weight_dtype: str = "bf16") -> float:
    """Tokens/s per user if every weight is read once per token at the sockets' full HBM
    bandwidth and nothing else costs time (the issue's yardstick: bf16, ~1790/204/35 for
    Llama-3.1 8B/70B/405B at 16 sn40l sockets)."""
    return sockets * node.socket.hbm.bandwidth_gbs * 1e9 / model.weight_bytes(weight_dtype)


def _layer(model: ModelConfig, node, st: Settings, tokens: int, ctx: int) -> dict:
    """One decoder layer on one socket's shard: kernels, collectives, seconds."""
    n, m = st.tp, node.socket
    hl, kvl, il = -(-model.heads // n), max(1, -(-model.kv_heads // n)), -(-model.intermediate // n)
    hl = kvl * -(-hl // kvl)   # whole groups of query heads per KV head
    if ctx > 0 and st.layer == "fused" and st.batch == 1:
        f = _fused_layer(model, node, n, tokens, ctx)
        if f is not None:
            ratio = WEIGHT_BYTES[st.weight_dtype] / 2.0
            # fp8/int8: the kernel streams its weights at HBM's peak; the bytes it no longer reads
            # are taken off at that rate (the all-reduces and latencies inside it are kept)
            s = f["seconds"] - f["weight_bytes"] * (1.0 - ratio) / (m.hbm.bandwidth_gbs * 1e9)
            reconf = m.reconfig.cycles / (m.clock_ghz * 1e9)
            charged = reconf if st.reconfig == "chain" else 0.0
            scale = s / f["seconds"] if f["seconds"] else 1.0
            row = {"part": "layer", "kernel": "decoder_layer", "op": "shard.decoder_layer", "seconds": f["seconds"],
                   "hbm_bytes": f["hbm_bytes"], "weight_bytes": f["weight_bytes"], "bottleneck": f["bottleneck"]}
            return {"attention_s": f["attention_s"] * scale, "mlp_s": f["mlp_s"] * scale,
                    "all_reduce_s": f["all_reduce_s"], "all_reduce_in_kernel": True, "reconfig_s": charged,
                    "reconfig_if_chained_s": reconf, "kernels": 1, "seconds": s + charged,
                    "layer_kernels": "fused", "fused": {k: v for k, v in f.items()
                                                         if k not in ("heads", "kv_heads", "intermediate")},
                    "heads_per_socket": hl, "kv_heads_per_socket": kvl, "intermediate_per_socket": il,
                    "weight_bytes_per_socket": f["weight_bytes"] * ratio, "kernel_rows": [row]}
    t = tokens if st.batch * tokens > 1 else 2   # see the module doc: one row is timed as two
    attn = _timed_kernels("attention", (model.hidden, hl, kvl, model.head_dim, st.batch, t, ctx), model.dtype, m)
    mlp = _timed_kernels("mlp", (model.hidden, il, st.batch, t), model.dtype, m)
    act = st.batch * tokens * model.hidden * 2.0   # the bf16 hidden state each all-reduce sums
    ar = 2 * node.all_reduce_s(act, n) if n > 1 else 0.0
    a_s, m_s = _scaled(attn, st.weight_dtype), _scaled(mlp, st.weight_dtype)
    kernels = len(attn) + len(mlp)
    reconf = kernels * m.reconfig.cycles / (m.clock_ghz * 1e9)
    charged = reconf if st.reconfig == "chain" else 0.0
    return {"attention_s": a_s, "mlp_s": m_s, "all_reduce_s": ar, "all_reduce_in_kernel": False, "reconfig_s": charged,
            "reconfig_if_chained_s": reconf, "kernels": kernels, "seconds": a_s + m_s + ar + charged,
            "layer_kernels": "author",
            "heads_per_socket": hl, "kv_heads_per_socket": kvl, "intermediate_per_socket": il,
            "weight_bytes_per_socket": (sum(r["weight_bytes"] for r in attn + mlp)) * WEIGHT_BYTES[st.weight_dtype] / 2,
            "kernel_rows": [dict(r, part="attention") for r in attn] + [dict(r, part="mlp") for r in mlp]}


def _head(model: ModelConfig, node, st: Settings, tokens: int) -> dict:
    n, m = st.tp, node.socket
    vl = -(-model.vocab // n)
    t = tokens if st.batch * tokens > 1 else 2
    rows = _timed_kernels("head", (model.hidden, vl, st.batch, t), model.dtype, m)
    gather = node.all_gather_s(st.batch * tokens * model.vocab * 2.0, n) if n > 1 else 0.0
    emb = st.batch * tokens * model.hidden * WEIGHT_BYTES[st.weight_dtype] / (m.hbm.bandwidth_gbs * 1e9) \
        + m.hbm.latency_ns * 1e-9
    s = _scaled(rows, st.weight_dtype)
    return {"lm_head_s": s, "logits_all_gather_s": gather, "embedding_s": emb, "kernels": len(rows),
            "seconds": s + gather + emb}


def estimate(model: ModelConfig | str, node, sockets: int | None = None, batch: int = 1, prompt_tokens: int = 1024,
             weight_dtype: str = "bf16", spec_accept: float = 1.0, reconfig: str = "resident",
             pipeline: int = 1, layer: str = "fused") -> dict:
    """Decode tokens/s per user and time to first token of ``model`` on ``sockets`` of ``node``.

    ``node`` is an :class:`asp_lang.node.Node` or a node preset/file name. ``pipeline`` > 1
    splits the layers into that many stages of ``sockets / pipeline`` tensor-parallel sockets;
    a token passes every stage in turn (its hidden state sent from stage to stage), so per-user
    decode gains nothing from it; it trades all-reduce latency for point-to-point sends."""
    from asp_lang.node import Node, load_node
    if not isinstance(model, ModelConfig):
        model = load_model(model)
    if not isinstance(node, Node):
        node = load_node(node)
    st = Settings(node.sockets if sockets is None else sockets, batch, prompt_tokens, weight_dtype,
                  float(spec_accept), reconfig, pipeline, layer)
    st.check(node)
    m = node.socket
    verify = math.ceil(st.spec_accept)              # tokens a target step processes per user
    dec = _layer(model, node, st, verify, st.prompt_tokens)
    head = _head(model, node, st, verify)
    # weights that do not fit a socket's HBM next to the KV cache are read from DDR
    w_sock = model.weight_bytes(weight_dtype) / st.sockets
    kv_sock = (-(-model.layers // st.pipeline) * 2 * dec["kv_heads_per_socket"] * model.head_dim * 2.0
               * st.batch * (st.prompt_tokens + verify))
    hbm = m.hbm.capacity_gib * 2**30
    overflow = max(0.0, w_sock + kv_sock - hbm)
    ddr_penalty = overflow / (m.ddr.bandwidth_gbs * 1e9) - overflow / (m.hbm.bandwidth_gbs * 1e9)
    hops = (st.pipeline - 1) * node.send_recv_s(st.batch * verify * model.hidden * 2.0, 0, min(st.tp, st.sockets - 1)) \
        if st.pipeline > 1 else 0.0
    step = model.layers * dec["seconds"] + head["seconds"] + ddr_penalty + hops
    tok_s = st.spec_accept / step
    pre = _layer(model, node, Settings(st.sockets, st.batch, st.prompt_tokens, weight_dtype, 1.0, reconfig,
                                       st.pipeline, layer), st.prompt_tokens, 0)
    pre_head = _head(model, node, st, 1)
    pre_hops = (st.pipeline - 1) * node.send_recv_s(st.batch * st.prompt_tokens * model.hidden * 2.0, 0,
                                                    min(st.tp, st.sockets - 1)) if st.pipeline > 1 else 0.0
    ttft = model.layers * pre["seconds"] + pre_head["seconds"] + ddr_penalty + pre_hops
    bound = weight_streaming_bound(model, node, st.sockets, "bf16")
    bound_dt = weight_streaming_bound(model, node, st.sockets, weight_dtype)

    def layer_json(d):
        return {k: v for k, v in d.items() if k != "kernel_rows"} | {
            "kernel_list": [{k: r[k] for k in ("part", "kernel", "op", "seconds", "hbm_bytes", "weight_bytes",
                                               "bottleneck")} for r in d["kernel_rows"]]}
    return {
        "model": model.name, "params": model.params, "machine": node.name, "socket": m.name,
        "sockets": st.sockets, "pipeline": st.pipeline, "tensor_parallel": st.tp,
        "batch": st.batch, "prompt_tokens": st.prompt_tokens,
        "weight_dtype": weight_dtype, "spec_accept": st.spec_accept, "reconfig": reconfig,
        "layer": dec["layer_kernels"],
        "decode_tokens_per_s_per_user": tok_s,
        "decode_tokens_per_s": tok_s * st.batch,
        "decode_step_seconds": step,
        "ttft_seconds": ttft,
        "weight_streaming_bound_bf16": bound,
        "weight_streaming_bound_dtype": bound_dt,
        "fraction_of_bound": tok_s / bound_dt / st.spec_accept,
        "hbm_fits": overflow == 0.0, "hbm_overflow_bytes_per_socket": overflow,
        "weight_bytes_per_socket": w_sock, "kv_cache_bytes_per_socket": kv_sock,
        "decode_breakdown": {"layers": model.layers, "per_layer": layer_json(dec),
                             "all_layers_s": model.layers * dec["seconds"], "head": head,
                             "ddr_overflow_s": ddr_penalty, "pipeline_sends_s": hops},
        "prefill_breakdown": {"per_layer": layer_json(pre), "all_layers_s": model.layers * pre["seconds"],
                              "head": pre_head, "pipeline_sends_s": pre_hops},
        "per_layer": {"decode_s": dec["seconds"], "prefill_s": pre["seconds"],
                      "decode_attention_s": dec["attention_s"], "decode_mlp_s": dec["mlp_s"],
                      "decode_all_reduce_s": dec["all_reduce_s"], "prefill_attention_s": pre["attention_s"],
                      "prefill_mlp_s": pre["mlp_s"], "prefill_all_reduce_s": pre["all_reduce_s"]},
        "node": node.with_sockets(st.sockets).summary(),
    }


def best_split(model: ModelConfig | str, node, sockets: int | None = None, **kw) -> dict:
    """Every (pipeline stages x tensor-parallel sockets) split of ``sockets`` estimated, and the
    one the cost model prefers for per-user decode (ties: the shorter time to first token)."""
    from asp_lang.node import Node, load_node
    if not isinstance(node, Node):
        node = load_node(node)
    n = node.sockets if sockets is None else sockets
    rows = []
    for pp in [d for d in range(1, n + 1) if n % d == 0]:
        r = estimate(model, node, n, pipeline=pp, **kw)
        rows.append({"pipeline": pp, "tensor_parallel": n // pp,
                     "decode_tokens_per_s_per_user": r["decode_tokens_per_s_per_user"],
                     "ttft_seconds": r["ttft_seconds"], "hbm_fits": r["hbm_fits"]})
    best = max(rows, key=lambda x: (x["decode_tokens_per_s_per_user"], -x["ttft_seconds"]))
    return {"sockets": n, "splits": rows, "best": best}


# ------------------------------------------------------------------ model switching

@dataclass
class SwitchResult:
    requests: list[dict]
    total_s: float
    switch_s: float
    switches: int
    host_loads: int

    def to_dict(self) -> dict:
        return asdict(self)


def switch_schedule(node, sockets: int, model_bytes: list[float], schedule: list[int], service_s: list[float] | float,
                    style: str = "rdu", hbm_bytes: float | None = None, ddr_bytes: float | None = None,
                    preloaded_ddr: bool = True, host_share: int = 1) -> SwitchResult:
    """Time a schedule of requests over K models with the switches it needs.

    ``style="rdu"``: models live in DDR (loaded from the host the first time unless
    ``preloaded_ddr``), the models in use are in HBM; a request for a model not in HBM copies it
    DDR -> HBM (and host -> DDR first if it is not in DDR). ``style="gpu"``: no DDR tier: a model
    not in HBM is copied host -> HBM over the host link, which ``host_share`` devices share (a
    DGX puts two GPUs behind one PCIe switch). Each model is sharded over ``sockets``: every
    socket copies its 1/sockets share in parallel. HBM and DDR hold as many whole models as fit
    (least recently used evicted); ``hbm_bytes``/``ddr_bytes`` default to the sockets' capacity.
    """
    if style not in ("rdu", "gpu"):
        raise ValueError(f"style must be 'rdu' or 'gpu', got {style!r}")
    if not schedule:
        return SwitchResult([], 0.0, 0.0, 0, 0)
    k = len(model_bytes)
    if any(not 0 <= i < k for i in schedule):
        raise ValueError(f"schedule names a model outside 0..{k - 1}")
    svc = [service_s] * len(schedule) if isinstance(service_s, (int, float)) else list(service_s)
    if len(svc) != len(schedule):
        raise ValueError("service_s needs one time per request")
    m = node.socket
    hbm_cap = sockets * m.hbm.capacity_gib * 2**30 if hbm_bytes is None else hbm_bytes
    ddr_cap = sockets * m.ddr.capacity_gib * 2**30 if ddr_bytes is None else ddr_bytes
    for i, b in enumerate(model_bytes):
        if b > hbm_cap:
            raise ValueError(f"model {i} ({b / 1e9:.1f} GB) does not fit the HBM of {sockets} sockets")
    hbm: list[int] = []
    ddr: list[int] = list(range(k)) if (style == "rdu" and preloaded_ddr) else []
    if style == "rdu" and sum(model_bytes[i] for i in ddr) > ddr_cap:
        ddr = []   # they do not all fit: load on demand
    rows, total, sw, nsw, loads = [], 0.0, 0.0, 0, 0

    def admit(lst: list[int], i: int, cap: float) -> None:
        if i in lst:
            lst.remove(i)
        lst.append(i)
        while sum(model_bytes[j] for j in lst) > cap:
            lst.pop(0)

    for r, (i, s) in enumerate(zip(schedule, svc)):
        share = model_bytes[i] / sockets
        cost, host = 0.0, False
        if i not in hbm:
            nsw += 1
            if style == "gpu":
                cost = node.host_to_hbm_s(share * host_share)
                host = True
            else:
                if i not in ddr:
                    cost += node.host_to_ddr_s(share)
                    host = True
                    admit(ddr, i, ddr_cap)
                cost += node.ddr_to_hbm_s(share)
        admit(hbm, i, hbm_cap)
        if style == "rdu" and i in ddr:
            admit(ddr, i, ddr_cap)
        loads += host
        sw += cost
        total += cost + s
        rows.append({"request": r, "model": i, "switch_s": cost, "host_load": host, "service_s": s,
                     "seconds": cost + s})
    return SwitchResult(rows, total, sw, nsw, loads)


__all__ = ["ModelConfig", "ConfigError", "load_model", "model_from_dict", "bundled_models", "estimate", "best_split",
           "weight_streaming_bound", "switch_schedule", "SwitchResult", "WEIGHT_BYTES"]
