"""What a new user meets in the first hour (issue 20): files a team can share (the umask is
honoured), the command first run plus ``--resume`` is accepted, ``show`` finds the latest run
on its own, plain progress lines when the output is a pipe, numbers explained (geometric mean,
roofline beside speedup, outliers flagged), one error format (``asp``'s source line and caret),
and a clear word when the file given is not a task at all."""

from __future__ import annotations

import io
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from agentforge.campaign import console
from agentforge.campaign.console import CampaignView, speedup_stats
from agentforge.campaign.runner import CampaignResult
from agentforge.cli import main
from agentforge.library import atomic_write_text

ROOT = Path(__file__).resolve().parents[2]
SUITE = ROOT / "evals" / "suite"


def _umask_022() -> None:
    os.umask(0o022)


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


@pytest.fixture(scope="module")
def runs_home(default_campaign, tmp_path_factory) -> Path:
    """A folder holding a copy of the README's default campaign as ``runs/suite-DATE`` (the shared
    run itself is never changed: other test files read it)."""
    home = tmp_path_factory.mktemp("first-hour")
    shutil.copytree(default_campaign, home / "runs" / "suite-20260101-000000")
    return home


# ---------------------------------------------------------------------- 1. files a team can share

def test_library_files_follow_the_umask_not_0600(default_campaign):
    """The README's main command, run under umask 022 (tests/conftest.py)."""
    lib = default_campaign / "library"
    files = [p for p in lib.rglob("*") if p.is_file() and p.name != ".lock"]
    assert (lib / "manifest.json") in files
    assert any("kernels" in p.parts for p in files) and any("tasks" in p.parts for p in files)
    assert {str(p.relative_to(lib)): oct(_mode(p)) for p in files} == \
        {str(p.relative_to(lib)): oct(0o644) for p in files}


def test_the_review_report_follows_the_umask_and_says_what_it_is_doing(default_campaign, tmp_path):
    out = tmp_path / "report.html"
    proc = subprocess.run([sys.executable, "-m", "agentforge.cli", "review", str(default_campaign), "-o", str(out),
                           "--no-timing"], capture_output=True, text=True, preexec_fn=_umask_022)
    assert proc.returncode == 0, proc.stderr
    assert _mode(out) == 0o644
    assert proc.stderr.startswith(f"review: reading {default_campaign}")     # said before the long part
    html = out.read_text()
    assert "geometric mean" in html and "fast_1: verified and faster than the op-by-op baseline" in html


def test_atomic_writes_follow_a_stricter_umask_too(tmp_path):
    old = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "a" / "manifest.json", "{}\n")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "a" / "manifest.json") == 0o640


# ---------------------------------------------------------------------- 2. resume, same command

def test_resume_with_the_same_suite_argument_is_accepted(runs_home, monkeypatch, capsys):
    run = runs_home / "runs" / "suite-20260101-000000"
    (runs_home / "suite-link").symlink_to(SUITE)
    monkeypatch.chdir(ROOT)
    for spelling in ("evals/suite", str(SUITE), str(runs_home / "suite-link"), "./evals/suite/"):
        assert main(["campaign", spelling, "--out", str(run), "--resume", "--quiet"]) == 0, capsys.readouterr().err
    # the other fixed settings too, when given with the run's own values
    assert main(["campaign", "evals/suite", "--out", str(run), "--resume", "--quiet", "--llm", "offline",
                 "--machine", "sn40l", "--attempts", "4"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    from agentforge.tasks import load_suite

    assert re.search(rf"^verified \d+/{len(load_suite(SUITE))}  (roofline \d+% \(median of \d+\)  )?fast_1 ", out,
                     re.M), out[-2000:]


def test_resume_with_another_suite_is_still_refused_saying_what_differs(runs_home, monkeypatch, capsys, tmp_path):
    run = runs_home / "runs" / "suite-20260101-000000"
    other = tmp_path / "other"
    other.mkdir()
    for f in ("add.py", "add.toml"):
        shutil.copy(SUITE / f, other / f)
    assert main(["campaign", str(other), "--out", str(run), "--resume", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "SUITE cannot change" in err and str(other) in err and str(SUITE) in err and "Traceback" not in err
    assert main(["campaign", "--out", str(run), "--resume", "--tasks", "add"]) == 2
    assert "--tasks cannot change" in capsys.readouterr().err


# ---------------------------------------------------------------------- 3. show without --run

def test_show_without_run_reads_the_latest_run_as_resume_finds_it(runs_home, monkeypatch, capsys):
    monkeypatch.chdir(runs_home)
    assert main(["show", "softmax", "--no-timing", "--no-color", "--width", "120"]) == 0
    got = capsys.readouterr()
    assert "softmax" in got.out and "runs/suite-20260101-000000" in got.err


def test_show_with_no_run_anywhere_says_how_to_get_one(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["show", "softmax"]) == 2
    err = capsys.readouterr().err
    assert "none under runs/" in err and "--run" in err and "Traceback" not in err


# ---------------------------------------------------------------------- 4. progress without a terminal

def test_a_piped_campaign_prints_a_plain_line_per_finished_task(default_campaign):
    """The README's main command with stdout a pipe (tests/conftest.py)."""
    from agentforge.tasks import load_suite

    out = (default_campaign / "done").read_text()
    n = len(load_suite(SUITE))
    done = [ln for ln in out.splitlines() if re.match(r"\[ *\d+/\d+\] \S+: (verified|FAILED)", ln)]
    assert [int(ln[1:].split("/")[0]) for ln in done] == list(range(1, n + 1))
    assert {ln.split("] ", 1)[1].split(":")[0] for ln in done} == {t.name for t in load_suite(SUITE)}
    for ln in done:
        assert re.search(r": (verified, [\d.]+x, roofline \d+%(, plan cache hit)?|FAILED: .+)  "
                         r"\(\d+ verified, \d+ failed, \d+s\)$", ln), ln
    assert "…" not in out and "━" not in "".join(done)      # no live bar cut short
    assert "geometric mean of" in out and "fast_1: the share of all tasks" in out


def test_a_rich_view_turns_plain_when_its_output_is_not_a_terminal():
    assert CampaignView("rich", io.StringIO()).mode == "plain"
    assert CampaignView("rich", io.StringIO(), force_terminal=True).mode == "rich"


START = {"event": "campaign_start", "run": "r1", "run_dir": "/tmp/r", "resume": False, "tasks": 2, "todo": 2,
         "done": 0, "workers": 1, "executor": "local", "llm": "offline", "machine": "sn40l"}


def test_plain_progress_says_what_is_running_when_nothing_finishes_for_a_while(monkeypatch):
    out = io.StringIO()
    v = CampaignView("plain", out)
    for e in (START, {"event": "task_start", "task": "attention"}):
        v(e)
    v({"event": "attempt", "task": "attention", "attempt": 0})      # within the heartbeat: no line
    assert len(out.getvalue().splitlines()) == 1
    monkeypatch.setattr(console, "HEARTBEAT_S", 0.0)
    v({"event": "attempt", "task": "attention", "attempt": 1})
    assert re.match(r"\[0/2\] running attention  \(0 verified, 0 failed, \d+s\)$", out.getvalue().splitlines()[-1])


def test_plain_progress_of_a_failed_task_gives_the_reason_literally():
    out = io.StringIO()
    v = CampaignView("plain", out)
    for e in (START, {"event": "task_start", "task": "[b]x[/b]"},
              {"event": "task_end", "task": "[b]x[/b]", "verified": False, "reason": "tile [4, 64] too big"}):
        v(e)
    assert out.getvalue().splitlines()[-1].startswith("[1/2] [b]x[/b]: FAILED: tile [4, 64] too big  (0 verified, 1 failed")


# ---------------------------------------------------------------------- 5. numbers a newcomer can read

def test_speedups_are_summed_up_by_their_geometric_mean_with_outliers_named():
    s = speedup_stats({"a": 2.0, "b": 8.0, "failed": None})
    assert s["geomean"] == pytest.approx(4.0) and s["n"] == 2 and s["outliers"] == []
    s = speedup_stats({"a": 2.0, "b": 3.0, "c": 2.5, "rope_gptj": 931.0})
    assert s["outliers"] == ["rope_gptj"]
    assert s["geomean_without_outliers"] == pytest.approx((2.0 * 3.0 * 2.5) ** (1 / 3))
    assert s["geomean"] < sum((2.0, 3.0, 2.5, 931.0)) / 4 / 20       # the arithmetic mean is what misleads


def test_the_summary_explains_fast_p_shows_roofline_beside_speedup_and_flags_outliers():
    def row(name, status, speedup, roof):
        return {"name": name, "status": status, "attempts": 1, "speedup": speedup, "roofline_fraction": roof,
                "plan_source": "planner"}

    tasks = [row("add", "verified", 2.0, 0.5), row("gelu", "verified", 3.0, 0.4), row("silu", "verified", 2.5, 0.7),
             row("rope_gptj", "verified", 931.0, 0.9), row("attention", "failed", None, None),
             row("cross_entropy_onehot_of_a_long_name", "failed", None, None)]
    totals = {"tasks": 6, "verified": 4, "fast_1": 0.8, "fast_2": 0.8, "llm_calls": 0, "tokens": 0, "cost": 0.0,
              "plan_cache_hit_rate": 0.0}
    out = io.StringIO()
    CampaignView("plain", out).summary(CampaignResult(Path("run"), "r1", "finished", None, totals, tasks, 3.0,
                                                      Path("run/library")))
    text = out.getvalue()
    assert "fast_1 80%" in text and "fast_1: the share of all tasks whose kernel is verified and faster" in text
    assert "fast_2: verified and more than 2x faster" in text
    assert re.search(r"speedup [\d.]+x \(geometric mean of 4\)", text)
    assert re.search(r"rope_gptj .*90%\s+│\s+931\.00x !", text)          # the roofline first, the speedup beside it
    assert re.search(r"^verified 4/6  roofline 60% \(median of 4\)  fast_1 80%", text, re.M)
    assert re.search(r"outlier .*rope_gptj 931x; geometric mean without it 2\.47x", text)
    assert "cross_entropy_onehot_of_a_long_name" in text and "…" not in text     # written to a pipe: nothing cut


# ---------------------------------------------------------------------- 6. one error format

def test_eval_prints_a_parse_error_with_source_line_and_caret_exactly_as_asp_does(tmp_path, capsys):
    from asp_lang.cli import main as asp_main

    bad = tmp_path / "bad.asp"
    bad.write_text("kernel k(x: f32[N]) -> f32[N] {\n  y = foo(x\n}\n")
    assert asp_main(["check", str(bad)]) == 2
    asp_err = capsys.readouterr().err.strip()
    assert asp_err.count("\n") == 2 and asp_err.endswith("^~~")       # file:line:col: error, line, caret
    assert main(["eval", str(SUITE / "add.py"), str(bad), "--in-process"]) == 1
    out = capsys.readouterr().out
    assert asp_err in out and "ERROR[" not in out


@pytest.mark.parametrize("args, said", [
    (["solve", "README.md"], "not a task file (a .md file)"),
    (["eval", "KERNEL.asp", "evals/suite/add.py"], "task first"),
])
def test_a_file_that_is_not_a_task_is_called_that_not_misnamed(args, said, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    if args[1] == "KERNEL.asp":
        args = [args[0], str(ROOT / "docs" / "examples" / "softmax_online.asp"), args[2]]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert said in err and "a task is a Python .py file" in err
    assert "rename" not in err and "Traceback" not in err


# ---------------------------------------------------------------------- 7. the README a newcomer follows

def test_the_readme_says_to_activate_the_venv_where_groups_live_and_that_times_are_for_idle_cores():
    text = (ROOT / "README.md").read_text()
    quick = text.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    assert quick.count("```bash") == 2                        # still exactly two commands
    reference = text.split("## The `asp` command", 1)[1]
    assert ". .venv/bin/activate" in reference.split("```", 1)[0]   # said before the first bare command
    assert "15 groups and 3 levels" in text and "`.toml` sidecar" in text
    assert "idle cores" in quick


# ---------------------------------------------------------------------- 8. CI on a shared host

FAKE_APT = """#!/bin/bash
echo "$*" >> "$APT_LOG"
case " $* " in
  *" -s "*) printf '%s\\n' "$APT_PLAN" ;;
esac
"""


@pytest.mark.parametrize("plan, installs", [
    ("Inst libfoo (1.0 Debian:12/stable [amd64])\nInst chromium (120.0 Debian:12/stable [amd64])", True),
    ("Inst libc6 [2.36-9] (2.36-9+deb12u4 Debian:12/stable [amd64])\nInst chromium (120.0 Debian [amd64])", False),
])
def test_ci_installs_chromium_alone_never_upgrading_what_is_installed(plan, installs, tmp_path):
    """apt-get is stood in for by a script that logs its arguments and plays back a plan."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "apt-get").write_text(FAKE_APT)
    (bin_dir / "apt-get").chmod(0o755)
    for tool in ("sed", "tr"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    log = tmp_path / "apt.log"
    env = {"PATH": str(bin_dir), "APT_LOG": str(log), "APT_PLAN": plan}
    proc = subprocess.run(["/bin/bash", str(ROOT / ".ci" / "chromium")], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr                   # a missing browser never fails CI
    calls = log.read_text().splitlines()
    installs_run = [c for c in calls if c.startswith("install") and " -s " not in f" {c} "]
    for c in calls[1:]:
        assert "--no-install-recommends" in c and "--no-upgrade" in c and "-qq" in c, c
    if installs:
        assert len(installs_run) == 1 and installs_run[0].endswith(" chromium")
    else:
        assert installs_run == [] and "would upgrade installed packages (libc6)" in proc.stdout


def test_ci_fails_on_any_non_zero_pytest_exit_including_no_tests_collected():
    run = (ROOT / ".ci" / "run").read_text()
    assert "set -euo pipefail" in run and run.rstrip().endswith(".venv/bin/python -m pytest")
