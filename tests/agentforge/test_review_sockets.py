"""The review shows a kernel on several sockets as one timeline per socket (issue 19)."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

import asp_lang
from agentforge.review.data import Review, TaskView
from agentforge.review.html import render_html
from agentforge.review.profile import report_to_timing
from agentforge.review.terminal import socket_timelines

ROOT = Path(__file__).resolve().parents[2]
MLP = ROOT / "docs" / "examples" / "multisocket" / "mlp_tp.asp"


def _timing():
    prog = asp_lang.compile_file(MLP, sizes={"P": 4})
    return report_to_timing("mlp_tp.asp", asp_lang.profile(prog))


def test_each_socket_has_a_timeline_of_its_operators():
    k = _timing()
    assert [s.socket for s in k.sockets] == [0, 1, 2, 3]
    for s in k.sockets:
        ops = [o["op"] for o in s.ops]
        assert ops == ["load", "load", "map", "load", "accum", "all_reduce", "store"]
        bars = s.bars(100, max(x.cycles for x in k.sockets))
        ar = next((left, length) for o, left, length in bars if o["op"] == "all_reduce")
        acc = next((left, length) for o, left, length in bars if o["op"] == "accum")
        assert ar[0] + ar[1] >= acc[0] + acc[1]  # the all_reduce ends after the accum that feeds it
        assert all(0 <= left and left + length <= 100.5 for _, left, length in bars)
    out = io.StringIO()
    Console(file=out, width=160, color_system=None).print(socket_timelines(k))
    text = out.getvalue()
    assert "4 sockets" in text and text.count("all_reduce") == 4


def test_the_html_report_draws_the_socket_timelines():
    t = TaskView(0, "mlp_tp", "verified", timings=[_timing()], files=[("mlp_tp.asp", MLP.read_text())],
                 kind="kernel")
    totals = {"tasks": 1, "verified": 1, "failed": 0, "pending": 0, "attempts": None, "tokens": None, "cost": None,
              "llm_calls": None, "fast_1": 0.0, "fast_2": 0.0}  # as a library's review has them
    html = render_html(Review(Path("lib"), False, {}, {}, "sn40l", totals, [t]))
    assert "timeline (busy window" in html
    sockets_table = html.split("timeline (busy window", 1)[1].split("</table>", 1)[0]
    assert sockets_table.count("<td>all_reduce</td>") == 4  # one row per socket
    assert sockets_table.count("<svg") == 4 * 7            # every operator of every socket
