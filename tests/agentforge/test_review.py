"""agentforge review / show: what the report and the terminal view must say, from a real run.

The run (tests/agentforge/test_review_helpers.py) has two offline-solved tasks, a softmax
task with a three-candidate lineage (rejected kernel -> verified fix; a second worker's plan)
and a failed task whose name, group and evaluator reason are hostile markup.
"""

from __future__ import annotations

import html as htmllib
import re
from pathlib import Path

import pytest
from test_review_helpers import (
    CAMPAIGN_TASKS,
    HOSTILE_COMMENT,
    HOSTILE_TASK,
    OFFLINE_TASKS,
    build_real_run,
    run_campaign,
)

from agentforge.review import ReviewError, load_review, render_html
from agentforge.review.charts import speedup_bins
from agentforge.review.cli import main as review_main
from agentforge.review.data import NO_RUN_NOTE, unified_diff
from agentforge.review.highlight import to_html, tokenize


def _cli_main():
    """The wired ``agentforge`` command once cli.py registers review/show; this module's own until then."""
    import agentforge.cli as cli

    src = Path(cli.__file__).read_text()
    return cli.main if "review" in src and "add_parsers" in src else review_main


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory) -> Path:
    return build_real_run(tmp_path_factory.mktemp("review-run"))


@pytest.fixture(scope="session")
def campaign_dir(tmp_path_factory) -> Path:
    return run_campaign(tmp_path_factory.mktemp("review-campaign") / "run")


@pytest.fixture(scope="session")
def review(run_dir):
    return load_review(run_dir)


@pytest.fixture(scope="session")
def report(review) -> str:
    return render_html(review)


# ------------------------------------------------------------------ reading a run

def test_a_real_campaign_run_is_reviewed_whole(campaign_dir, tmp_path):
    """`agentforge campaign` output as is: every task, its final kernel, checks, timing, lineage."""
    rv = load_review(campaign_dir)
    assert sorted(t.name for t in rv.tasks) == sorted(CAMPAIGN_TASKS) and rv.has_run and not rv.notes
    assert rv.manifest["machine"] == "sn40l" and "packages" in rv.manifest and rv.run["status"] == "finished"
    for t in rv.tasks:
        assert t.status == "verified" and t.kernel_id and t.files and t.checks and t.candidates
        assert all(k.error is None and k.bottleneck_op for k in t.timings) and t.timings
        assert t.roofline is not None and t.roofline.point("kernel")
    page = render_html(rv)
    assert page.count('<details class="task"') == len(CAMPAIGN_TASKS)
    assert all(f'data-name="{n}"' in page for n in CAMPAIGN_TASKS)


def test_review_reads_every_task_of_the_run_in_order(review):
    assert [t.name for t in review.tasks] == [*OFFLINE_TASKS, "softmax", HOSTILE_TASK]
    assert [t.status for t in review.tasks] == ["verified", "verified", "verified", "failed"]
    assert review.has_run and review.manifest["machine"] == "sn40l"
    assert review.totals["verified"] == 3 and review.totals["tokens"] == 1500


def test_lineage_links_each_candidate_to_its_workers_previous_one_with_a_diff(review):
    sm = review.task("softmax")
    by = {(c.attempt, c.worker): c for c in sm.candidates}
    assert by[(1, 0)].parent == by[(0, 0)].id and by[(0, 1)].parent is None
    assert [c.id for c in sm.roots] == [by[(0, 0)].id, by[(0, 1)].id]
    assert by[(0, 0)].children == [by[(1, 0)]]
    assert "+  fn normalise(t, m, l) = exp(t - m) / l" in by[(1, 0)].diff
    assert "-  fn normalise(t, m, l) = exp(t) / l" in by[(1, 0)].diff
    assert by[(0, 0)].evaluation["reason_code"] == "mismatch" and "values differ" in by[(0, 0)].feedback
    assert by[(1, 0)].best and not by[(0, 0)].best


def test_final_kernel_checks_and_timing_come_from_the_library_and_the_timing_model(review):
    sm = review.task("softmax")
    assert sm.kind == "kernel" and sm.final_is_verified and HOSTILE_COMMENT in sm.files[0][1]
    assert {c["distribution"] for c in sm.checks} >= {"normal", "heavy", "uniform"}
    (tm,) = sm.timings
    assert tm.error is None and tm.seconds > 0 and tm.bottleneck_op and tm.ops
    assert max(o.share for o in tm.ops) == pytest.approx(1.0)
    # timed at the task's own sizes (bound like the verifier), so it agrees with the evaluation
    assert tm.at == "the task's own sizes" and tm.seconds == pytest.approx(sm.simulated_seconds, rel=0.05)
    assert sm.roofline.point("kernel") and sm.roofline.point("baseline")
    relu = review.task("relu")
    assert relu.kind == "plan" and relu.plan and relu.plan_cache_hit is False and relu.plan_source


def test_a_bare_library_is_reviewed_without_lineage_and_says_so(run_dir, tmp_path):
    lib_review = load_review(run_dir / "library", timing=False)
    assert not lib_review.has_run and lib_review.notes == [NO_RUN_NOTE]
    assert sorted(t.name for t in lib_review.tasks) == sorted([*OFFLINE_TASKS, "softmax"])
    assert all(t.candidates == [] for t in lib_review.tasks)
    page = render_html(lib_review)
    assert "lineage not available" in page and htmllib.escape(NO_RUN_NOTE, quote=False) in page


@pytest.mark.parametrize("make, err", [
    (lambda p: p / "missing", "no such directory"),
    (lambda p: p, "neither a campaign run directory"),
    (lambda p: (p / "f.txt").write_text("x") and p / "f.txt", "a file"),
])
def test_bad_paths_are_review_errors(tmp_path, make, err):
    with pytest.raises(ReviewError, match=err):
        load_review(make(tmp_path))


def test_a_broken_library_manifest_is_a_review_error(tmp_path):
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ReviewError):
        load_review(tmp_path)


# ------------------------------------------------------------------ the HTML

def test_report_is_self_contained(report):
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", report)
    assert "<link" not in report and "@import" not in report
    assert report.count("<script") == 1 and report.count("<style") == 1
    assert re.search(r"<script>.*</script>", report, re.S)  # inline only, no src=


def test_report_has_a_strict_csp_matching_its_own_blocks(report):
    from agentforge.review.html import csp_hash

    csp = htmllib.unescape(re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', report).group(1))
    assert "default-src 'none'" in csp and "unsafe-inline" not in csp and "unsafe-eval" not in csp
    js = re.search(r"<script>(.*?)</script>", report, re.S).group(1)
    css = re.search(r"<style>(.*?)</style>", report, re.S).group(1)
    assert csp_hash(js) in csp and csp_hash(css) in csp
    assert " style=" not in report  # inline style attributes would be CSP violations


def test_report_shows_campaign_view_manifest_charts_and_every_kernel(report, review):
    for needle in ('id="task-table"', 'id="manifest"', "emulator_version", "packages.agentforge",
                   "speedup distribution", "roofline: all kernels", "verified kernels over time",
                   "Correctness checks", "Timing breakdown", "Lineage", "plan cache miss"):
        assert needle in report, needle
    assert report.count('<details class="task"') == len(review.tasks)
    assert report.count('class="cand') == sum(len(t.candidates) for t in review.tasks)
    assert '<span class="o">accum</span>' in report  # ASP highlighted


def test_untrusted_text_is_displayed_not_executed(report):
    # the only <script> element is the report's own
    assert len(re.findall(r"<script\b", report, re.I)) == 1
    assert "<img" not in report and "<b>bold</b>" not in report and "<i>g</i>" not in report
    assert htmllib.escape(HOSTILE_TASK).replace("&#x27;", "&#39;") in report   # the task name, as text
    assert "&lt;script&gt;alert(&#39;kernel&#39;)&lt;/script&gt;" in report   # the kernel comment
    assert "&lt;script&gt;alert(&#39;reason&#39;)&lt;/script&gt;" in report   # the evaluator reason
    assert "&lt;script&gt;alert(&#39;note&#39;)&lt;/script&gt;" in report     # a task note
    own = re.search(r"<script>(.*?)</script>", report, re.S).group(1)
    assert "alert" not in own and "softmax" not in own               # no run data inside <script>


# ------------------------------------------------------------------ pieces

def test_highlighter_covers_every_character_and_escapes():
    src = "kernel k(x: f32[N]) -> (y: f32[N]) {  # <b>&\n  ys = map(xs, fn=f, par=4) 1.5e-3 $\n}"
    assert "".join(t.text for t in tokenize(src)) == src
    kinds = {t.text: t.kind for t in tokenize(src)}
    assert (kinds["kernel"], kinds["f32"], kinds["map"], kinds["1.5e-3"], kinds["->"]) == \
        ("keyword", "dtype", "stream_op", "number", "op")
    out = str(to_html(src))
    assert "<b>" not in out and "&lt;b&gt;&amp;" in out and htmllib.unescape(re.sub("<[^>]+>", "", out)) == src


def test_diff_of_equal_texts_is_empty_and_plans_diff_as_json():
    assert unified_diff("a\n", "a\n", "x", "y") == ""
    from agentforge.review.data import candidate_text

    d = unified_diff(candidate_text("plan", None, {"par": 2}), candidate_text("plan", None, {"par": 4}), "a", "b")
    assert '-  "par": 2' in d and '+  "par": 4' in d


def test_sort_keys_are_numbers_the_page_can_parse():
    import math

    from agentforge.review.html import sort_key

    assert [sort_key(v) for v in (1.5, None, math.nan, math.inf, -math.inf)] == \
        ["1.5", "", "", "Infinity", "-Infinity"]     # JS parseFloat reads each; "inf" would be NaN


def test_speedup_bins_count_every_kernel_once():
    bins = speedup_bins([0.5, 1.0, 1.2, 1.7, 3.0, 5.0, 12.0, 1.05])
    assert sum(n for _, n in bins) == 8 and dict(bins)["~1x"] == 2


# ------------------------------------------------------------------ commands

def test_review_command_writes_one_html_file(run_dir, tmp_path, capsys):
    out = tmp_path / "r.html"
    assert _cli_main()(["review", str(run_dir), "-o", str(out), "--no-timing"]) == 0
    assert out.read_text().startswith("<!doctype html>") and "3/4 verified" in capsys.readouterr().out


def test_review_command_reports_a_bad_path_in_one_line(tmp_path, capsys):
    assert _cli_main()(["review", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("agentforge: error:") and "Traceback" not in err


def test_show_prints_kernel_lineage_checks_and_timing(run_dir, capsys):
    assert _cli_main()(["show", "softmax", "--run", str(run_dir), "--no-color", "--width", "160"]) == 0
    out = capsys.readouterr().out
    for needle in ("softmax", "kernel softmax_online", "lineage", "mismatch", "attempt 1, worker 0",
                   "+  fn normalise(t, m, l) = exp(t - m) / l", "correctness checks", "timing: kernel.asp",
                   "bottleneck", "[best]"):
        assert needle in out, needle
    assert "[bold red]markup[/]" in out  # rich markup in a kernel is shown as text


def test_show_an_unknown_task_names_the_tasks(run_dir, capsys):
    assert _cli_main()(["show", "nope", "--run", str(run_dir)]) == 2
    assert "no task 'nope'" in capsys.readouterr().err


def test_show_on_a_bare_library_says_lineage_is_absent(run_dir, capsys):
    assert _cli_main()(["show", "relu", "--run", str(run_dir / "library"), "--no-timing", "--no-color"]) == 0
    assert "lineage not available" in capsys.readouterr().out
