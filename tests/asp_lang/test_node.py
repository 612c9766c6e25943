"""Specification of multi-socket nodes (asp_lang/node.py, asp_lang/machines/nodes/*.toml).

A node is N copies of a single-socket machine joined by peer links and host links; presets
load; every malformed file is a MachineError naming the field, located in the file; the
collective costs follow the alpha-beta formulas of docs/multisocket.md.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from asp_lang.errors import MachineError
from asp_lang.machine import load_machine, presets
from asp_lang.node import (COLLECTIVES, a2a_all_gather_s, a2a_all_reduce_s, load_node, node_presets,
                           ring_all_gather_s, ring_all_reduce_s, ring_hops, send_recv_s)

GOOD = """name = "t"
socket = "sn40l"
sockets = 4

[peer]
bandwidth_gbs = 50
latency_ns = 1000
topology = "ring"

[host]
bandwidth_gbs = 25
latency_ns = 0
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "n.toml"
    p.write_text(text)
    return p


def test_presets_load_and_reuse_the_socket_machine():
    assert {"sn40l-node8", "sn40l-node16"} <= set(node_presets())
    for name in node_presets():
        n = load_node(name)
        assert n.socket == load_machine("sn40l")
        assert n.hbm_gbs_total == n.sockets * 1800
    assert load_node("sn40l-node8").sockets == 8 and load_node("sn40l-node16").sockets == 16
    # node presets are not single-socket machine presets (load_machine would reject them)
    assert not set(node_presets()) & set(presets())


def test_user_file_loads_and_socket_path_is_relative_to_it(tmp_path):
    n = load_node(write(tmp_path, GOOD))
    assert (n.sockets, n.peer.topology, n.peer.bandwidth_gbs, n.host.latency_ns) == (4, "ring", 50.0, 0.0)
    sock = tmp_path / "mini.toml"
    from importlib import resources
    sock.write_text(resources.files("asp_lang").joinpath("machines/rdu-mini.toml").read_text())
    n2 = load_node(write(tmp_path, GOOD.replace('"sn40l"', '"mini.toml"')))
    assert n2.socket == load_machine("rdu-mini")


@pytest.mark.parametrize("old,new,field,line", [
    ("topology = \"ring\"", "topology = \"torus\"", "topology", 8),
    ("bandwidth_gbs = 50", "bandwidth_gbs = -1", "bandwidth_gbs", 6),
    ("bandwidth_gbs = 50", "bandwidth_gbs = \"fast\"", "bandwidth_gbs", 6),
    ("sockets = 4", "sockets = 0", "sockets", 3),
    ("sockets = 4", "sockets = 2.5", "sockets", 3),
    ("latency_ns = 1000", "latency_ns = 1000\nwidth = 3", "width", 8),
    ("socket = \"sn40l\"", "socket = \"nosuch\"", "socket", 2),
])
def test_bad_fields_are_named_and_located(tmp_path, old, new, field, line):
    p = write(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(MachineError) as e:
        load_node(p)
    assert field in e.value.message
    assert e.value.location() == f"{p}:{line}:{e.value.span.col}" and e.value.span.line == line


def test_missing_section_and_unknown_node(tmp_path):
    with pytest.raises(MachineError, match="missing 'host'"):
        load_node(write(tmp_path, GOOD.split("[host]")[0]))
    with pytest.raises(MachineError, match="sn40l-node8"):
        load_node("no-such-node")


def test_ring_formulas():
    # 2(p-1) alpha + 2 (p-1)/p n / beta
    n, p, gbs, lat = 8e6, 8, 100.0, 1000.0
    assert ring_all_reduce_s(n, p, gbs, lat) == pytest.approx(2 * 7 * 1e-6 + 2 * 7 / 8 * n / 1e11)
    assert ring_all_gather_s(n, p, gbs, lat) == pytest.approx(7 * 1e-6 + 7 / 8 * n / 1e11)
    assert ring_all_reduce_s(n, 1, gbs, lat) == 0.0
    assert [ring_hops(0, d, 8) for d in range(8)] == [0, 1, 2, 3, 4, 3, 2, 1]
    assert send_recv_s(1e9, 3, 100.0, 1000.0) == pytest.approx(3e-6 + 0.01)


def test_all_to_all_formulas_pick_one_or_two_shot():
    p, gbs, lat = 8, 100.0, 1000.0
    small, big = 1e3, 1e9
    assert a2a_all_reduce_s(small, p, gbs, lat) == pytest.approx(1e-6 + small / 1e11)        # one shot
    assert a2a_all_reduce_s(big, p, gbs, lat) == pytest.approx(2e-6 + 2 * big / p / 1e11)    # two shot
    assert a2a_all_gather_s(big, p, gbs, lat) == pytest.approx(1e-6 + big / p / 1e11)


def test_node_collectives_follow_topology_and_group():
    n = load_node("sn40l-node8")
    ring = n.with_peer(topology="ring")
    for kind in COLLECTIVES:
        assert n.collective_s(kind, 0, group=1) == 0.0
        assert 0 < n.collective_s(kind, 4096) <= ring.collective_s(kind, 4096)
        # bigger buffers and larger groups never cost less
        assert n.collective_s(kind, 1 << 20) >= n.collective_s(kind, 4096)
        assert ring.collective_s(kind, 1 << 20, 8) >= ring.collective_s(kind, 1 << 20, 4)
    # cycles are the same cost on the socket clock
    assert n.collective_cycles("all_reduce", 1 << 20) == pytest.approx(n.all_reduce_s(1 << 20) * 1.6e9)
    assert n.with_peer(bandwidth_gbs=128).all_reduce_s(1 << 30) < n.all_reduce_s(1 << 30)
    with pytest.raises(ValueError, match="group of 9"):
        n.all_reduce_s(1, group=9)
    with pytest.raises(ValueError, match="unknown collective"):
        n.collective_s("broadcast", 1)


def test_copies_use_ddr_and_host_bandwidths():
    n = load_node("sn40l-node8")
    gb = 1e9
    assert n.ddr_to_hbm_s(gb) == pytest.approx(800e-9 + gb / 200e9)
    assert n.host_to_hbm_s(gb) == pytest.approx(2e-6 + gb / 25e9)
    assert n.host_to_ddr_s(0) == 0.0
    assert math.isclose(n.host_to_hbm_s(gb) / n.ddr_to_hbm_s(gb), 8.0, rel_tol=1e-3)
    assert n.with_sockets(2).sockets == 2 and n.with_sockets(2).socket is n.socket


def test_docs_node_file_loads_and_presets_match_the_docs_table(tmp_path):
    """docs/multisocket.md shows a node file; it must load, and its preset table must say what
    the presets say."""
    import re
    text = (Path(__file__).resolve().parents[2] / "docs" / "multisocket.md").read_text()
    block = re.search(r"```toml\n(.*?)```", text, re.S).group(1)
    n = load_node(write(tmp_path, block))
    assert (n.sockets, n.peer.topology) == (4, "ring")
    for name in node_presets():
        p = load_node(name)
        row = next(line for line in text.splitlines() if line.startswith(f"| `{name}` |"))
        assert f"{p.peer.bandwidth_gbs:g} GB/s" in row and f"{p.host.bandwidth_gbs:g} GB/s" in row
        assert p.peer.topology.replace("_", "-") in row


def test_node_for_names_presets_and_socket_files(tmp_path):
    from importlib import resources

    from asp_lang.node import node_for
    assert node_for("sn40l", 8).name == "sn40l-node8"
    n12 = node_for("sn40l", 12)
    assert n12.sockets == 12 and n12.peer == load_node("sn40l-node16").peer
    assert node_for("sn40l-node16").sockets == 16
    mini = tmp_path / "mini.toml"
    mini.write_text(resources.files("asp_lang").joinpath("machines/rdu-mini.toml").read_text())
    n = node_for(mini, 4)
    assert n.socket == load_machine("rdu-mini") and n.sockets == 4 and n.peer == load_node("sn40l-node8").peer
    with pytest.raises(MachineError, match="no node preset"):
        node_for("nosuch", 2)
    with pytest.raises(MachineError, match="1..8"):
        node_for("sn40l-node8", 9)
