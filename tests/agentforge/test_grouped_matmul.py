"""The grouped (per-expert) matmul kernel (agentforge.grouped_matmul): Hugging Face's MoE experts
(``transformers::grouped_mm_fallback(input [S, K] sorted by expert, weight [E, K, N], offs [E])``)
run on the emulator and equal the op's own definition for every routing: empty experts, every
row in one expert, rows past ``offs[-1]`` (zeros), a single row, rows of several K tiles, tiles
of one row. The op is the one transformers registers; without transformers the test registers
the same definition under the same name."""

from __future__ import annotations

import dataclasses
import importlib
import itertools

import pytest
import torch

import asp_lang
from agentforge.baseline import build_baseline
from agentforge.capture import graph_from_export
from agentforge.grouped_matmul import default_tile_rows, lower_grouped_mm, tile_count
from agentforge.lowering import UnsupportedOpError

MACHINE = asp_lang.load_machine("sn40l")


def _reference(input: torch.Tensor, weight: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    """The op's definition: row s with offs[e-1] <= s < offs[e] is input[s] @ weight[e]; the rest 0."""
    out = torch.zeros(input.shape[0], weight.shape[2], dtype=input.dtype)
    start = 0
    for e, end in enumerate(offs.tolist()):
        out[start:end] = input[start:end] @ weight[e]
        start = end
    return out


try:
    importlib.import_module("transformers.integrations.moe")   # registers transformers::grouped_mm_fallback
except ImportError:
    if not hasattr(torch.ops.transformers, "grouped_mm_fallback"):
        torch.library.custom_op("transformers::grouped_mm_fallback", mutates_args=(),
                                schema="(Tensor input, Tensor weight, Tensor offs) -> Tensor")(_reference)
        torch.library.register_fake("transformers::grouped_mm_fallback")(
            lambda input, weight, offs: input.new_empty(input.shape[0], weight.shape[2]))


class Grouped(torch.nn.Module):
    def forward(self, x, w, offs):
        return torch.ops.transformers.grouped_mm_fallback(x, w, offs)


def _offs(counts) -> torch.Tensor:
    return torch.tensor(counts).cumsum(0).to(torch.int32)


def _chain(S: int, K: int, N: int, E: int):
    x, w = torch.randn(S, K), torch.randn(E, K, N)
    ep = torch.export.export(Grouped(), (x, w, _offs([S] + [0] * (E - 1)))).run_decompositions()
    return build_baseline(graph_from_export(ep, "grouped", "grouped.py"), MACHINE), x, w


@pytest.mark.parametrize("counts", [[8, 8, 8, 8], [0, 32, 0, 0], [32, 0, 0, 0], [0, 0, 0, 32], [5, 0, 20, 7],
                                    [1, 1, 1, 1], [0, 0, 0, 0], [3, 0, 0, 10]])
def test_every_routing_of_32_rows_over_4_experts_equals_the_definition(counts):
    chain, x, w = _chain(32, 64, 256, 4)
    o = _offs(counts)
    torch.testing.assert_close(chain.run([x, w, o])[0], _reference(x, w, o), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("S,K,N,E", [(7, 48, 40, 3), (100, 256, 96, 8), (1, 16, 8, 2)])
def test_other_sizes_and_random_routings_equal_the_definition(S, K, N, E):
    chain, x, w = _chain(S, K, N, E)
    g = torch.Generator().manual_seed(S)
    for _ in range(3):
        o = torch.randint(0, S + 1, [E], generator=g).sort().values.to(torch.int32)
        torch.testing.assert_close(chain.run([x, w, o])[0], _reference(x, w, o), atol=1e-4, rtol=1e-4)


def test_a_kernel_with_several_k_tiles_and_one_row_tiles_is_exact():
    """K = 256 against N = 128 is read in two K tiles; tm = 1 makes every row its own tile."""
    x, w = torch.randn(9, 256), torch.randn(3, 256, 128)
    ep = torch.export.export(Grouped(), (x, w, _offs([2, 3, 4]))).run_decompositions()
    graph = graph_from_export(ep, "grouped", "grouped.py")
    node = next(n for n in graph.nodes if "grouped_mm" in n.target)
    for tm in (1, 8):
        k = lower_grouped_mm(node, graph, tm=tm)
        assert f"TM = {tm}" in k.source and "KT = 2" in k.source
    chain = build_baseline(graph, MACHINE)
    for counts in ([2, 3, 4], [9, 0, 0], [0, 0, 5]):
        o = _offs(counts)
        torch.testing.assert_close(chain.run([x, w, o])[0], _reference(x, w, o), atol=1e-4, rtol=1e-4)


def test_the_tile_count_holds_every_routing():
    """NT tiles of TM rows hold every expert's rows and the zero group, each padded to TM."""
    for S, E, tm in [(7, 3, 2), (12, 4, 4), (5, 2, 8)]:
        worst = 0
        for counts in itertools.product(range(S + 1), repeat=E):
            if sum(counts) > S:
                continue
            groups = list(counts) + [S - sum(counts)]
            worst = max(worst, sum(-(-c // tm) for c in groups))
        assert worst <= tile_count(S, E, tm)


def test_default_tile_rows_pad_at_most_the_real_rows():
    for S, E in [(1, 8), (32, 4), (4096, 8), (16, 1)]:
        tm = default_tile_rows(S, E)
        assert 1 <= tm <= 32 and (tm == 1 or (E + 1) * (tm - 1) <= S)
    assert default_tile_rows(8192, 8) == 32


def test_an_unsupported_form_is_refused_naming_the_shapes():
    class Flat(torch.nn.Module):
        def forward(self, x, w, offs):
            return torch.ops.transformers.grouped_mm_fallback(x, w, offs)

    ep = torch.export.export(Flat(), (torch.randn(4, 8), torch.randn(2, 8, 3), _offs([4, 0]))).run_decompositions()
    graph = graph_from_export(ep, "grouped", "grouped.py")
    node = next(n for n in graph.nodes if "grouped_mm" in n.target)
    node = dataclasses.replace(node, args=(node.args[0], node.args[0], node.args[2]))   # a 2-D "weight"
    with pytest.raises(UnsupportedOpError, match=r"needs \[S, K\], \[E, K, N\], \[E\]"):
        lower_grouped_mm(node, graph)
