"""Kernels on several sockets (issue 19): sharded tensors, collectives, send/recv.

* the tensor-parallel MLP and the head-sharded GQA attention block of docs/examples/multisocket
  match PyTorch on 2 and 4 sockets (the interpreter runs every shard and the collectives);
* every collective is charged in both timing models, at the cost asp_lang.node gives, and the
  two models agree within the 15% bound the single-socket models keep (docs/fidelity.md);
  communication overlaps the compute that feeds it;
* a program that would deadlock (a collective some socket of its group never reaches, a recv
  with no send before it, a send nobody receives) and malformed collective syntax are
  file:line:col errors.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import asp_lang
from asp_lang.node import load_node

ROOT = Path(__file__).resolve().parents[2]
MULTI = ROOT / "docs" / "examples" / "multisocket"
FIDELITY = 0.15  # |fast / event - 1|, the bound tests/asp_lang/test_event.py holds the examples to


def _t(a) -> torch.Tensor:
    return torch.from_numpy(np.asarray(a, dtype=np.float64))


def ref_mlp(i: dict) -> np.ndarray:
    return (torch.relu(_t(i["x"]) @ _t(i["w1"])) @ _t(i["w2"])).numpy()


def ref_attention(i: dict, h: int = 8, kvh: int = 4, hd: int = 32) -> np.ndarray:
    x = _t(i["x"])
    s = x.shape[0]
    q = (x @ _t(i["wq"])).reshape(s, h, hd).transpose(0, 1)
    k = (x @ _t(i["wk"])).reshape(s, kvh, hd).transpose(0, 1).repeat_interleave(h // kvh, 0)
    v = (x @ _t(i["wv"])).reshape(s, kvh, hd).transpose(0, 1).repeat_interleave(h // kvh, 0)
    o = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    return (o.transpose(0, 1).reshape(s, h * hd) @ _t(i["wo"])).numpy()


REFERENCES = {"mlp_tp": ref_mlp, "attention_heads": ref_attention}


def compile_example(name: str, sockets: int, **kw) -> asp_lang.Program:
    return asp_lang.compile_file(MULTI / f"{name}.asp", sizes={"P": sockets}, **kw)


def test_every_multisocket_example_has_a_reference():
    assert sorted(p.stem for p in MULTI.glob("*.asp")) == sorted(REFERENCES)


@pytest.mark.parametrize("name", sorted(REFERENCES))
@pytest.mark.parametrize("sockets", [2, 4])
def test_sharded_example_matches_pytorch(name, sockets):
    prog = compile_example(name, sockets)
    assert len(prog.programs) == sockets
    inputs = asp_lang.random_inputs(prog, seed=sockets)
    d = inputs["x"].shape[1]
    for w in ("wq", "wk", "wv"):  # weights scaled as initialised (1/sqrt(fan-in)): softmax not saturated
        if w in inputs:
            inputs[w] = inputs[w] / np.float32(np.sqrt(d))
    (out,) = asp_lang.run(prog, inputs).values()
    ref = REFERENCES[name](inputs)
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, rtol=2e-4, atol=2e-5 * max(1.0, float(np.abs(ref).max())))


def test_each_socket_holds_only_its_shard():
    prog = compile_example("mlp_tp", 4)
    assert prog.tensors["w1"].shape == (256, 1024)  # what the caller passes
    for sp in prog.programs:
        assert sp.tensors["w1"].shape == (256, 256)  # split(1) over 4 sockets
        assert sp.tensors["w2"].shape == (256, 256)  # split(0)
        assert sp.tensors["x"].shape == (64, 256)    # not split: whole on every socket
    # a socket's HBM traffic is its shards plus the whole x: a quarter of the weights
    rep = asp_lang.profile(prog)
    one = asp_lang.profile(compile_example("mlp_tp", 1))
    assert rep.sockets[0]["hbm_bytes"] < 0.3 * one.hbm_bytes


def _all_reduce_cost(prog, node) -> tuple[float, float]:
    """(busy, latency) cycles asp_lang.node charges an all-reduce of the kernel's partial y."""
    ar = next(n for n in prog.programs[0].nodes if n.op == "all_reduce")
    nbytes = ar.in_types[0].count * ar.in_types[0].elem.nbytes
    clk = prog.machine.clock_ghz * 1e9
    p = len(prog.programs)
    return ((node.all_reduce_s(nbytes, p) - node.all_reduce_s(0, p)) * clk, node.all_reduce_s(0, p) * clk)


@pytest.mark.parametrize("name", sorted(REFERENCES))
@pytest.mark.parametrize("sockets", [2, 4])
def test_collectives_are_charged_in_both_models_which_agree(name, sockets):
    prog = compile_example(name, sockets)
    fast, event = asp_lang.profile(prog), asp_lang.simulate(prog)
    assert abs(fast.cycles / event.cycles - 1) <= FIDELITY
    busy, lat = _all_reduce_cost(prog, load_node("sn40l-node8").with_sockets(sockets))
    assert busy > 0 and lat > 0
    for rep in (fast, event):
        assert len(rep.sockets) == sockets
        assert all(s["link_cycles"] == pytest.approx(busy) for s in rep.sockets)
    # sharding pays: the same block on one socket takes longer
    one = asp_lang.profile(compile_example(name, 1))
    assert fast.cycles < one.cycles


def test_a_slow_link_is_charged_its_cost_in_both_models():
    """At 1 GB/s the all-reduce dominates: both models take at least its node cost, and agree."""
    slow = load_node("sn40l-node8").with_peer(bandwidth_gbs=1.0)
    prog = compile_example("mlp_tp", 2, node=slow)
    busy, lat = _all_reduce_cost(prog, slow.with_sockets(2))
    fast, event = asp_lang.profile(prog), asp_lang.simulate(prog)
    for rep in (fast, event):
        assert busy + lat <= rep.cycles <= 1.1 * (busy + lat)
        assert rep.bottleneck.startswith("all_reduce")
    assert abs(fast.cycles / event.cycles - 1) <= FIDELITY


def test_the_all_reduce_overlaps_the_compute_that_feeds_it():
    """The all-reduce streams the partial y tile by tile, so with a link about as slow as the
    compute the kernel takes far less than compute + link (it would take the sum if it waited)."""
    node = load_node("sn40l-node8").with_peer(bandwidth_gbs=5.0)
    prog = compile_example("mlp_tp", 2, node=node)
    busy, lat = _all_reduce_cost(prog, node.with_sockets(2))
    fast_link, event_link = asp_lang.profile(prog), asp_lang.simulate(prog)
    free = load_node("sn40l-node8").with_peer(bandwidth_gbs=1e6, latency_ns=0)
    compute = asp_lang.profile(compile_example("mlp_tp", 2, node=free)).cycles
    assert busy > 0.5 * compute  # the link is a real cost here
    for rep in (fast_link, event_link):
        assert rep.cycles < 0.75 * (compute + busy + lat)
        assert rep.cycles >= max(compute, busy)


GATHER = """\
kernel gather_scatter(x: f32[M, N] @split(0), z: f32[M, N]) -> (g: f32[M, N], r: f32[M, N] @split(0)) {
  sockets P = 2
  sizes M = 16, N = 32
  xs = load(x, tile=[1, N])          # [M/P] of f32[1, N]: this socket's rows
  gs = all_gather(xs, at=0)          # [P, M/P]: every socket's rows
  gf = flatten(gs, dims=[0, 1])
  store(g, gf)
  zs = load(z, tile=[1, N])          # [M] of f32[1, N]: whole on each socket
  rs = reduce_scatter(zs, dim=0)     # [M/P]: the sum over sockets, this socket's block
  store(r, rs)
}
"""


def test_all_gather_and_reduce_scatter_compute_what_they_say():
    prog = asp_lang.compile(GATHER, filename="gs.asp")
    i = asp_lang.random_inputs(prog, seed=3)
    out = asp_lang.run(prog, i)
    np.testing.assert_array_equal(out["g"], i["x"])      # gathered back whole
    np.testing.assert_allclose(out["r"], 2 * i["z"], rtol=1e-6)  # z summed over the 2 sockets
    node = load_node("sn40l-node8").with_sockets(2)
    clk = prog.machine.clock_ghz * 1e9
    ag = next(n for n in prog.programs[0].nodes if n.op == "all_gather")
    rs = next(n for n in prog.programs[0].nodes if n.op == "reduce_scatter")
    assert ag.attrs["link_busy"] + ag.attrs["link_latency"] == pytest.approx(node.all_gather_s(16 * 32 * 4, 2) * clk)
    assert rs.attrs["link_busy"] + rs.attrs["link_latency"] == pytest.approx(
        node.reduce_scatter_s(16 * 32 * 4, 2) * clk)
    fast, event = asp_lang.profile(prog), asp_lang.simulate(prog)
    assert abs(fast.cycles / event.cycles - 1) <= FIDELITY


PIPELINE = """\
kernel pipeline(x: f32[M, N], w1: f32[N, N], w2: f32[N, N]) -> (y: f32[M, N]) {
  sockets P = 2
  sizes M = 256, N = 256, R = 8
  fn mm(a, w) = matmul(a, w)
  xs = load(x, tile=[R, N], on=[0])
  w1s = load(w1, tile=[N, N], repeat=M / R, on=[0])
  hs = map(xs, w1s, fn=mm, on=[0])
  send(hs, to=1, on=[0])
  h1 = recv(from=0, on=[1])
  w2s = load(w2, tile=[N, N], repeat=M / R, on=[1])
  ys = map(h1, w2s, fn=mm, on=[1])
  store(y, ys, on=[1])
}
"""


def test_send_recv_pipeline_runs_and_the_receiver_waits_for_the_sender():
    prog = asp_lang.compile(PIPELINE, filename="pipe.asp")
    i = asp_lang.random_inputs(prog)
    y = asp_lang.run(prog, i)["y"]
    ref = (_t(i["x"]) @ _t(i["w1"]) @ _t(i["w2"])).numpy()
    np.testing.assert_allclose(y, ref, rtol=2e-4, atol=2e-5 * float(np.abs(ref).max()))
    fast, event = asp_lang.profile(prog), asp_lang.simulate(prog)
    assert abs(fast.cycles / event.cycles - 1) <= FIDELITY
    for rep in (fast, event):
        s0, s1 = rep.sockets
        # two equal stages streamed: about one stage, not two, and never less than the sender
        assert s0["cycles"] <= s1["cycles"] <= 1.2 * s0["cycles"]


def test_a_one_socket_group_is_the_plain_kernel():
    prog = compile_example("mlp_tp", 1)
    i = asp_lang.random_inputs(prog)
    np.testing.assert_allclose(asp_lang.run(prog, i)["y"], ref_mlp(i), rtol=2e-4, atol=1e-3)
    assert asp_lang.profile(prog).sockets[0]["link_cycles"] == 0


# ------------------------------------------------------------------ errors

HEAD = """\
kernel k(x: f32[M, N] @split(0)) -> (y: f32[M / P, N]) {
  sockets P = 2
  sizes M = 16, N = 32
  fn dbl(t) = t * 2
  xs = load(x, tile=[1, N])
"""


def _error(src: str, kind: str, where: str, *words: str) -> asp_lang.AspError:
    with pytest.raises(asp_lang.AspError) as ei:
        prog = asp_lang.compile(src, filename="k.asp")
        asp_lang.run(prog, asp_lang.random_inputs(prog))
    e = ei.value
    assert e.kind == kind, e.short()
    assert e.location() == f"k.asp:{where}", e.short()
    for w in words:
        assert w in e.message, e.short()
    assert f"k.asp:{where}: error:" in e.render()
    return e


def test_a_collective_some_sockets_never_reach_is_a_deadlock_at_its_line():
    _error(HEAD + "  ys = all_reduce(xs, on=[0])\n  store(y, ys)\n}\n", "CollectiveError", "6:8",
           "never by socket(s) 1", "deadlock")


def test_a_four_socket_collective_names_the_sockets_that_never_come():
    src = HEAD.replace("sockets P = 2", "sockets P = 4") + "  ys = all_reduce(xs, on=[0, 2])\n  store(y, ys)\n}\n"
    _error(src, "CollectiveError", "6:8", "reached by socket(s) 0, 2", "never by socket(s) 1, 3")


def test_a_recv_with_no_send_before_it_is_a_deadlock():
    src = HEAD + "  r = recv(from=1, on=[0])\n  send(xs, to=0, on=[1])\n  store(y, r, on=[0])\n}\n"
    _error(src, "CollectiveError", "6:7", "socket 0 waits here for a stream from socket 1", "deadlock")


def test_a_send_nobody_receives_is_an_error_at_the_send():
    src = HEAD + "  send(xs, to=1, on=[0])\n  store(y, xs, on=[1])\n}\n"
    _error(src, "CollectiveError", "6:3", "never receives")


def test_mismatched_shard_shapes_at_a_collective():
    src = HEAD + ("  a = map(xs, fn=dbl, on=[0])\n  _ = map(xs, fn=dbl, on=[1])\n"
                  "  a = load(x, tile=[2, N], on=[1])\n  s = all_reduce(a)\n  store(y, s)\n}\n")
    _error(src, "ShapeError", "9:7", "socket 0 gives stream[8] of f32[1, 32]", "socket 1 gives stream[4] of f32[2, 32]")


def test_a_split_that_does_not_divide_is_located_at_the_split():
    src = "kernel k(x: f32[N] @split(0)) -> (y: f32[N]) {\n  sockets P = 3\n  sizes N = 4\n" \
          "  xs = load(x, tile=[N])\n  store(y, xs)\n}\n"
    _error(src, "SizeError", "1:27", "4 entries, not a multiple of 3")


def test_replicated_results_the_sockets_disagree_on():
    _error(HEAD + "  store(y, xs)\n}\n", "CollectiveError", "1:38", "store different values")


@pytest.mark.parametrize("src, kind, where, words", [
    ("kernel k(x: f32[N] @split()) -> (y: f32[N]) {}", "ParseError", "1:27", "@split needs the axis"),
    ("kernel k(x: f32[N] @split(0) @split(0)) -> (y: f32[N]) {}", "ParseError", "1:31", "two @split"),
    ("kernel k(x: f32[N] @split(0) -> (y: f32[N]) {}", "ParseError", "1:30", "expected ','"),
    ("kernel k(x: f32[N]) -> (y: f32[N]) {\n  sockets P = 2, Q = 3\n}", "ParseError", "2:3", "names one size"),
    ("kernel k(x: f32[N]) -> (y: f32[N]) {\n  sockets P = 2\n  sockets Q = 2\n}", "ParseError", "3:3",
     "second 'sockets' line"),
    (HEAD + "  send(xs)\n  store(y, xs)\n}\n", "ArgumentError", "6:3", "send needs to="),
    (HEAD + "  send(xs, to=0, on=[0])\n  store(y, xs)\n}\n", "ArgumentError", "6:15", "itself"),
    (HEAD + "  ys = all_reduce(xs, group=3)\n  store(y, ys)\n}\n", "ArgumentError", "6:29", "group=[0, 1]"),
    (HEAD + "  ys = all_reduce(xs, on=[0, 2])\n  store(y, ys)\n}\n", "ArgumentError", "6:30", "socket 2"),
    (HEAD + "  ys = all_reduce(xs, op=max)\n  store(y, ys)\n}\n", "ArgumentError", "6:26", "no argument 'op'"),
    (HEAD + "  ys = all_gather(xs, at=5)\n  store(y, ys)\n}\n", "ArgumentError", "6:26", "at=5"),
    (HEAD + "  a = load(x, tile=[8, N])\n  ys = reduce_scatter(a, dim=0, group=[0, 1])\n  store(y, ys)\n"
     "  store(y, xs)\n}\n", "SizeError", "7:8", "not a multiple of 2"),
    ("kernel k(x: f32[N]) -> (y: f32[N]) {\n  sizes N = 4\n  xs = load(x, tile=[N])\n"
     "  ys = all_reduce(xs)\n  store(y, ys)\n}\n", "CollectiveError", "4:8", "add a 'sockets P = 2' line"),
    ("kernel k(x: f32[N] @split(0)) -> (y: f32[N]) {\n  sizes N = 4\n  xs = load(x, tile=[N])\n"
     "  store(y, xs)\n}\n", "ArgumentError", "1:27", "runs on one: add a 'sockets P = 2' line"),
])
def test_malformed_collective_syntax_is_located(src, kind, where, words):
    _error(src, kind, where, words)


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_multisocket_examples_print_canonically(name):
    src = (MULTI / f"{name}.asp").read_text()
    assert asp_lang.format_kernel(asp_lang.parse(src)) == src


def test_asp_profile_shows_every_socket_and_takes_a_node(capsys):
    from asp_lang.cli import main
    path = str(MULTI / "mlp_tp.asp")
    assert main(["profile", path, "--sizes", "P=4", "--node", "sn40l-node16"]) == 0
    out = capsys.readouterr().out
    assert "on 4 x sn40l" in out and "sn40l-node16[4]" in out
    assert sum(line.lstrip().startswith("socket ") for line in out.splitlines()) == 4
    assert main(["check", path, "--node", "no-such-node"]) == 2
    assert "unknown node 'no-such-node'" in capsys.readouterr().err


def test_the_interpreter_caps_hold_for_the_whole_group():
    """Each socket stays under the element cap, the group does not: a LimitError at the operator."""
    from asp_lang.interp import Limits
    prog = compile_example("mlp_tp", 4)
    i = asp_lang.random_inputs(prog)
    cap = 2_000_000  # each of the 4 sockets produces 1.16 million values, the group 4.65 million
    with pytest.raises(asp_lang.AspError) as ei:
        asp_lang.run(prog, i, Limits(max_elements=cap))
    assert ei.value.kind == "LimitError" and "sockets produced more than" in ei.value.message


ASYMMETRIC = """\
kernel asym(x: f32[M, N], w: f32[N, N]) -> (y: f32[M, N]) {
  sockets P = 2
  sizes M = 256, N = 256, R = 8
  fn mm(a, b) = matmul(a, b)
  fn half(t) = t * 0.5
  xs = load(x, tile=[R, N])
  ws = load(w, tile=[N, N], repeat=M / R, on=[0])
  h = map(xs, ws, fn=mm, on=[0])
  h = map(xs, fn=half, on=[1])
  s = all_reduce(h)
  ws2 = load(w, tile=[N, N], repeat=M / R, on=[1])
  ys = map(s, ws2, fn=mm, on=[1])
  store(y, ys, on=[1])
  _ = map(s, fn=half, on=[0])
}
"""


def test_a_socket_waits_at_a_collective_for_a_slower_peer():
    """Socket 0 computes x @ w before the all_reduce, socket 1 only x / 2, then multiplies the sum
    by w: socket 1's all_reduce streams at socket 0's pace, so the group takes about one matmul
    (they overlap tile by tile), more than socket 1 alone, and both models say so."""
    prog = asp_lang.compile(ASYMMETRIC, filename="asym.asp")
    i = asp_lang.random_inputs(prog)
    ref = ((_t(i["x"]) @ _t(i["w"])) + 0.5 * _t(i["x"])) @ _t(i["w"])
    np.testing.assert_allclose(asp_lang.run(prog, i)["y"], ref.numpy(), rtol=2e-4,
                               atol=2e-5 * float(ref.abs().max()))
    alone = [asp_lang.profile(sp).cycles for sp in prog.programs]  # each socket as if never waiting
    fast, event = asp_lang.profile(prog), asp_lang.simulate(prog)
    assert asp_lang.profile(prog).cycles == fast.cycles  # the waits do not depend on what ran before
    assert abs(fast.cycles / event.cycles - 1) <= FIDELITY
    for rep in (fast, event):
        s0, s1 = rep.sockets
        assert s1["cycles"] > alone[1] and s1["cycles"] >= s0["cycles"]  # socket 1 waited for socket 0
        assert rep.cycles < 1.2 * max(alone)  # overlapped, not one matmul after the other (2 x max)
