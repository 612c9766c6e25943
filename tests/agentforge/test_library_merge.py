"""Merge and verify never trust a foreign library (issue 14, hole 6).

A library from elsewhere may lie in its manifest (times, signatures, ids), carry symbolic links
or paths out of itself, bring its own definition of a task the receiver already has, hold .asp
files that are not what its plans build, or ship task code that tries to write on this machine.
`library merge` re-verifies and re-times every incoming kernel against the receiving library's
own task in a confined worker before it may replace anything; `library verify` re-verifies and
re-times everything. The libraries here are real: one written by a campaign (offline author),
others built from real evaluations of hand-written kernels."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import asp_lang
from agentforge.campaign import load_config, run_campaign
from agentforge.cli import main
from agentforge.library import Library, Provenance, build_entry, entry_id, op_name
from agentforge.loop import task_context
from agentforge.sandbox import landlock_abi
from agentforge.solution import KernelSolution
from agentforge.tasks import load_task
from agentforge.verify import VerifyConfig, evaluate

ROOT = Path(__file__).resolve().parents[2]
SUITE = ROOT / "evals" / "suite"

ADD = """
kernel add_k(x: f32[B, D], y: f32[B, D]) -> (z: f32[B, D]) {
  sizes B = 4096
  sizes D = 4096
  fn f0(a, b) = %s
  s1 = load(x, tile=[1, 1024]%s)
  s2 = load(y, tile=[1, 1024]%s)
  s3 = map(s1, s2, fn=f0%s)
  store(z, s3%s)
}
"""
SLOW_ADD = ADD % ("a + b", "", "", "", "")                                   # correct, one lane: slow
WRONG_ADD = ADD % ("a", ", par=4", ", par=4", ", par=16", ", par=4")          # returns x
# merge and verify run task code only in a Landlock-confined worker; without Landlock they refuse
# (test_without_landlock_nothing_foreign_runs), so the tests that need the worker need Landlock
needs_sandbox = pytest.mark.skipif(landlock_abi() == 0, reason="no Linux Landlock here: the confined worker refuses")
FORGED_ADD_TASK = (SUITE / "add.py").read_text().replace("return x + y", "return x * 1.0")   # i.e. x


def add_kernel(lib_root: Path, task_path: Path, source: str) -> str:
    """Verify ``source`` against the task (this process: the test's own, trusted task files) and
    add it to the library at ``lib_root``, the way a campaign does. Returns the entry id."""
    task = load_task(task_path)
    machine = asp_lang.load_machine("sn40l")
    ctx = task_context(task, machine)
    ev = evaluate(task, {"kind": "kernel", "source": source, "filename": "kernel.asp"}, VerifyConfig(),
                  baseline_seconds=ctx.baseline_seconds)
    assert ev.verified, ev.reason
    prov = Provenance(author="hand", model=None, plan_source=None, prompt_hash=None, date="2026-12-04T00:00:00+00:00",
                      machine="sn40l", emulator_version=asp_lang.EMULATOR_VERSION, agentforge_version="0.1.0")
    entry, files, task_files = build_entry(task, KernelSolution(source, "kernel.asp", machine), ev, ctx.signature, prov)
    assert Library.create(lib_root, "sn40l", asp_lang.EMULATOR_VERSION).add(entry, files, task_files)
    return entry.id


@pytest.fixture(scope="module")
def authored(tmp_path_factory) -> Path:
    """add and softmax by the offline author, through a campaign."""
    tmp = tmp_path_factory.mktemp("authored")
    (tmp / "suite").mkdir()
    for n in ("add", "softmax"):
        for ext in (".py", ".toml"):
            shutil.copy(SUITE / f"{n}{ext}", tmp / "suite" / f"{n}{ext}")
    res = run_campaign(load_config([], suite=str(tmp / "suite"), out=str(tmp / "run"), workers=1))
    assert res.status == "finished"
    return tmp / "run" / "library"


@pytest.fixture(scope="module")
def slow_add(tmp_path_factory) -> Path:
    """A library holding one correct but slow add kernel."""
    lib = tmp_path_factory.mktemp("slow") / "library"
    add_kernel(lib, SUITE / "add.py", SLOW_ADD)
    return lib


def copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


def entries(lib: Path) -> dict:
    return {e["id"]: e for e in json.loads((lib / "manifest.json").read_text())["kernels"]}


def merge_json(into: Path, frm: Path, capsys) -> tuple[int, dict]:
    code = main(["library", "merge", str(into), str(frm), "--json"])
    return code, json.loads(capsys.readouterr().out)


def by_task(report: dict) -> dict:
    return {r["task"]: r for r in report["kernels"]}


@needs_sandbox
def test_a_correct_faster_kernel_from_another_library_is_merged(authored, slow_add, tmp_path, capsys):
    into = copy(slow_add, tmp_path / "into")
    (slow_id,) = entries(into)
    code, report = merge_json(into, authored, capsys)
    assert code == 0, report
    rows = by_task(report)
    assert rows["add"]["status"] == "replaced" and rows["softmax"]["status"] == "added"
    assert (report["added"], report["replaced"], report["rejected"]) == (1, 1, 0)
    merged = entries(into)
    assert slow_id not in merged and set(merged) == set(entries(authored))
    for e in merged.values():   # numbers measured here, equal to the honest ones recorded by the campaign
        assert e["simulated_seconds"] == pytest.approx(entries(authored)[e["id"]]["simulated_seconds"], rel=1e-6)
    assert not (into / "kernels" / slow_id).exists()


@needs_sandbox
def test_a_forged_time_does_not_replace_a_verified_kernel_and_verify_exits_non_zero(authored, slow_add, tmp_path,
                                                                                       capsys):
    into = copy(authored, tmp_path / "into")
    forged = copy(slow_add, tmp_path / "forged")
    m = json.loads((forged / "manifest.json").read_text())
    m["kernels"][0].update(simulated_seconds=1e-12, speedup=m["kernels"][0]["baseline_seconds"] / 1e-12)
    (forged / "manifest.json").write_text(json.dumps(m))
    before = (into / "manifest.json").read_text()
    code, report = merge_json(into, forged, capsys)
    assert code == 1
    (row,) = report["kernels"]
    assert row["status"] == "rejected" and row["code"] == "timing" and "1e-12" in row["reason"]
    assert row["measured_seconds"] > 1e-6
    assert (into / "manifest.json").read_text() == before
    assert main(["library", "verify", str(forged), "--json"]) == 1
    (vrow,) = json.loads(capsys.readouterr().out)
    assert vrow["verified"] and not vrow["ok"] and not vrow["timing_matches"]
    assert any("simulated_seconds recorded 1e-12" in p for p in vrow["problems"])


def test_a_symbolic_link_in_the_incoming_library_is_refused(authored, tmp_path, capsys):
    into = copy(authored, tmp_path / "into")
    before = (into / "manifest.json").read_text()
    secret = tmp_path / "secret.py"
    secret.write_text("API_KEY = 'do-not-copy'\n")
    evil = copy(authored, tmp_path / "evil")
    task_file = next(iter(entries(evil).values()))["task_file"]
    (evil / task_file).unlink()
    (evil / task_file).symlink_to(secret)                     # a file that points out of the library
    assert main(["library", "merge", str(into), str(evil)]) == 2
    assert "symbolic link" in capsys.readouterr().err
    evil2 = copy(authored, tmp_path / "evil2")
    kernel_dir = evil2 / Path(next(iter(entries(evil2).values()))["files"][0]).parent
    outside = tmp_path / "outside"
    shutil.move(kernel_dir, outside)
    kernel_dir.symlink_to(outside, target_is_directory=True)   # a folder that points out of the library
    assert main(["library", "merge", str(into), str(evil2)]) == 2
    assert "symbolic link" in capsys.readouterr().err
    assert (into / "manifest.json").read_text() == before
    assert "do-not-copy" not in "".join(p.read_text() for p in into.rglob("*") if p.is_file())


def test_a_path_that_leaves_the_library_is_refused(authored, tmp_path, capsys):
    into = copy(authored, tmp_path / "into")
    before = (into / "manifest.json").read_text()
    (tmp_path / "outside.asp").write_text("kernel k() -> () {}\n")
    for bad in ("../outside.asp", str(tmp_path / "outside.asp")):
        evil = copy(authored, tmp_path / f"evil{len(bad)}")
        m = json.loads((evil / "manifest.json").read_text())
        m["kernels"][0]["files"] = [bad]
        (evil / "manifest.json").write_text(json.dumps(m))
        assert main(["library", "merge", str(into), str(evil)]) == 2
        assert "stay inside the library" in capsys.readouterr().err
    # inside the library but not a kernel file: the receiver's paths are never taken from the manifest
    evil = copy(authored, tmp_path / "evil_manifest")
    m = json.loads((evil / "manifest.json").read_text())
    m["kernels"] = m["kernels"][:1]
    m["kernels"][0]["files"] = ["manifest.json"]
    (evil / "manifest.json").write_text(json.dumps(m))
    code, report = merge_json(into, evil, capsys)
    assert code == 1
    (row,) = report["kernels"]
    assert row["status"] == "rejected" and row["code"] == "unsafe" and "manifest.json" in row["reason"]
    assert (into / "manifest.json").read_text() == before


def test_a_manifest_built_to_crash_the_reader_is_a_clear_error(authored, tmp_path, capsys):
    """Nesting deep enough to exhaust Python's recursion is refused as a bad manifest (exit 2)."""
    into = copy(authored, tmp_path / "into")
    evil = copy(authored, tmp_path / "evil")
    text = (evil / "manifest.json").read_text()
    (evil / "manifest.json").write_text(text.replace('"plan": {', '"plan": {"x": ' + "[" * 100000 + "]" * 100000
                                                       + ", ", 1))
    assert main(["library", "merge", str(into), str(evil)]) == 2
    assert "not valid JSON" in capsys.readouterr().err


@needs_sandbox
def test_a_wrong_add_with_a_forged_task_does_not_replace_and_verify_catches_tampering(authored, tmp_path, capsys):
    forged_suite = tmp_path / "forged_suite"
    forged_suite.mkdir()
    (forged_suite / "add.py").write_text(FORGED_ADD_TASK)
    shutil.copy(SUITE / "add.toml", forged_suite / "add.toml")
    forged = tmp_path / "forged"
    wrong_id = add_kernel(forged, forged_suite / "add.py", WRONG_ADD)     # consistent with its own (forged) task
    into = copy(authored, tmp_path / "into")
    before = (into / "manifest.json").read_text()
    code, report = merge_json(into, forged, capsys)
    assert code == 1
    (row,) = report["kernels"]
    assert row["id"] == wrong_id and row["status"] == "rejected" and row["code"] == "conflict"
    assert "defined differently" in row["reason"]
    assert (into / "manifest.json").read_text() == before
    # the same forgery written into a library in place (as the old merge let it): verify fails
    tampered = copy(authored, tmp_path / "tampered")
    add = next(e for e in entries(tampered).values() if e["task"] == "add")
    (tampered / add["task_file"]).write_text(FORGED_ADD_TASK)
    assert main(["library", "verify", str(tampered)]) == 1
    out = capsys.readouterr().out
    assert f"FAIL {add['id']}" in out and "not the one it was verified against" in out


@needs_sandbox
def test_a_plan_entry_whose_asp_is_not_what_its_plan_builds_fails_verify(authored, tmp_path, capsys):
    lib = copy(authored, tmp_path / "lib")
    m = json.loads((lib / "manifest.json").read_text())
    e = next(k for k in m["kernels"] if k["task"] == "add")
    assert e["kind"] == "plan"
    name = Path(e["files"][0]).name
    text = "# whatever a forger likes, shown by `library show` as the kernel's source\n"
    # a careful forger also makes the id the digest of the new content
    new_id = entry_id(op_name(e["task"]), e["signature"]["sized_key"], e["dtypes"], {name: text}, e["plan"])
    (lib / "kernels" / new_id).mkdir()
    (lib / "kernels" / new_id / name).write_text(text)
    shutil.rmtree(lib / "kernels" / e["id"])
    e.update(id=new_id, files=[f"kernels/{new_id}/{name}"])
    (lib / "manifest.json").write_text(json.dumps(m))
    assert main(["library", "verify", str(lib), "--json"]) == 1
    rows = {r["id"]: r for r in json.loads(capsys.readouterr().out)}
    assert not rows[new_id]["ok"] and any("not what its plan builds" in p for p in rows[new_id]["problems"])
    assert sum(r["ok"] for r in rows.values()) == 1            # softmax is untouched and passes
    # and the same entry offered to a merge: rejected for the same reason
    m["kernels"] = [e]
    (lib / "manifest.json").write_text(json.dumps(m))
    into = copy(authored, tmp_path / "into")
    code, report = merge_json(into, lib, capsys)
    (row,) = report["kernels"]
    assert code == 1 and row["status"] == "rejected" and row["code"] == "content"


@needs_sandbox
def test_foreign_task_code_cannot_write_outside_its_scratch_and_merge_reports_it(authored, tmp_path, capsys):
    suite = tmp_path / "s" / "t"
    suite.mkdir(parents=True)
    # a new task (absent from the receiver) whose code writes two folders above itself
    (suite / "evil_add.py").write_text((SUITE / "add.py").read_text().replace(
        "import torch.nn as nn\n",
        "import torch.nn as nn\nfrom pathlib import Path\nPath(__file__).resolve().parents[2].joinpath('pwned')"
        ".write_text('owned')\n"))
    shutil.copy(SUITE / "add.toml", suite / "evil_add.toml")
    frm = tmp_path / "from" / "library"
    add_kernel(frm, suite / "evil_add.py", ADD % ("a + b", ", par=4", ", par=4", ", par=16", ", par=4"))
    (tmp_path / "pwned").unlink()                 # written while this test built the library, in its own process
    into = copy(authored, tmp_path / "into")
    before = (into / "manifest.json").read_text()
    code, report = merge_json(into, frm, capsys)
    assert code == 1
    (row,) = report["kernels"]
    assert row["status"] == "rejected" and row["code"] == "task" and "Permission denied" in row["reason"]
    assert not (frm / "pwned").exists() and not any(p.name == "pwned" for p in tmp_path.rglob("pwned"))
    assert (into / "manifest.json").read_text() == before


@needs_sandbox
def test_a_new_task_that_computes_a_problem_the_receiver_holds_is_a_conflict(authored, tmp_path, capsys):
    suite = tmp_path / "suite"
    suite.mkdir()
    shutil.copy(SUITE / "add.py", suite / "plus.py")      # another name, the same problem (signature and dtypes)
    frm = tmp_path / "from"
    new_id = add_kernel(frm, suite / "plus.py", ADD % ("a + b", ", par=4", ", par=4", ", par=16", ", par=4"))
    into = copy(authored, tmp_path / "into")
    before = (into / "manifest.json").read_text()
    code, report = merge_json(into, frm, capsys)
    (row,) = report["kernels"]
    assert code == 1 and row["id"] == new_id and row["status"] == "rejected" and row["code"] == "conflict", row
    assert "another task definition" in row["reason"]
    assert (into / "manifest.json").read_text() == before


@pytest.mark.skipif(landlock_abi() > 0, reason="Landlock is available here: the confined worker runs")
def test_without_landlock_nothing_foreign_runs(authored, slow_add, tmp_path, capsys):
    into = copy(authored, tmp_path / "into")
    before = (into / "manifest.json").read_text()
    code, report = merge_json(into, slow_add, capsys)
    (row,) = report["kernels"]
    assert code == 1 and row["status"] == "rejected" and row["code"] == "sandbox" and "Landlock" in row["reason"]
    assert (into / "manifest.json").read_text() == before
