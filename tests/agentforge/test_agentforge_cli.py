"""The `agentforge` command line, run as a user would (`python -m agentforge.cli`).

Exit codes: 0 verified, 1 rejected (the reason printed), 2 a user error (missing or broken
files, an op the baseline cannot lower); never a Python traceback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agentforge.capture import capture_at
from agentforge.tasks import load_task
from agentforge.verify import VerifyConfig, targeted_distributions

ROOT = Path(__file__).resolve().parents[2]
SOFTMAX = ROOT / "evals" / "suite" / "softmax.py"
CONTROL = ROOT / "evals" / "adversarial" / "controls" / "softmax__online.asp"
ZEROS = ROOT / "evals" / "adversarial" / "softmax__zeros.asp"
BROKEN = Path(__file__).parent / "fixtures" / "broken"
UNSUPPORTED = Path(__file__).parent / "fixtures" / "unsupported" / "sort_rows.py"

SCORE_FIELDS = ("verified", "reason", "reason_code", "simulated_seconds", "baseline_seconds", "speedup",
                "roofline_fraction", "hbm_bytes")


def agentforge(*args, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.run([sys.executable, "-m", "agentforge.cli", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stdout, proc.stdout
    return proc


def test_eval_control_verifies_with_json():
    p = agentforge("eval", SOFTMAX, CONTROL, "--json")
    assert p.returncode == 0, p.stdout + p.stderr
    d = json.loads(p.stdout)
    for key in SCORE_FIELDS:
        assert key in d, key
    assert d["verified"] is True and d["reason"] is None and d["reason_code"] is None
    assert d["simulated_seconds"] > 0 and d["baseline_seconds"] > 0 and d["hbm_bytes"] > 0
    assert d["speedup"] == pytest.approx(d["baseline_seconds"] / d["simulated_seconds"])
    assert 0 < d["roofline_fraction"] <= 1
    assert d["machine"] == "sn40l"
    # the documented schedule (docs/evaluation.md section 2): every check size set x every seed, then one
    # check per extra distribution at the first set: the task's own ("large") and those aimed at its op
    # classes (softmax: last_max, offset, zeros), each with the next seed
    task, cfg = load_task(SOFTMAX), VerifyConfig()
    sets = list({json.dumps(c["sizes"], sort_keys=True): c["sizes"] for c in d["checks"]}.values())
    assert len(sets) == cfg.size_sets and all(s != task.sizes for s in sets), sets
    planned = cfg.checks(task, sets, targeted_distributions(capture_at(task, meta=True)))
    assert [(c["sizes"], c["seed"], c["distribution"]) for c in d["checks"]] == planned
    assert {"large", "last_max", "offset", "zeros"} <= {c["distribution"] for c in d["checks"]}
    assert all(c["passed"] for c in d["checks"])


def test_eval_adversarial_is_rejected_with_the_reason():
    p = agentforge("eval", SOFTMAX, ZEROS)
    assert p.returncode == 1, p.stdout + p.stderr
    assert "REJECTED (constant)" in p.stdout
    assert "reason:" in p.stdout and "constant" in p.stdout


def test_eval_adversarial_json_in_process():
    p = agentforge("eval", SOFTMAX, ROOT / "evals" / "adversarial" / "softmax__first_rows_only.asp", "--json",
                   "--in-process")
    assert p.returncode == 1
    d = json.loads(p.stdout)
    assert d["verified"] is False and d["reason_code"] == "nonfinite" and "never written" in d["reason"]
    assert d["simulated_seconds"] is None and d["speedup"] is None


def test_eval_compile_error_is_a_rejection_not_a_crash():
    p = agentforge("eval", SOFTMAX, ROOT / "evals" / "adversarial" / "softmax__syntax_error.asp", "--in-process")
    assert p.returncode == 1 and "REJECTED (compile)" in p.stdout


@pytest.mark.parametrize("task, kernel, message", [
    (ROOT / "evals" / "suite" / "no_such_task.py", CONTROL, "no such task file"),
    (SOFTMAX, ROOT / "evals" / "adversarial" / "no_such_kernel.asp", "no such kernel file"),
    (BROKEN / "syntax_error.py", CONTROL, "syntax error"),
    (BROKEN / "bad_toml.py", CONTROL, "bad_toml"),
])
def test_eval_user_errors_exit_2(task, kernel, message):
    p = agentforge("eval", task, kernel)
    assert p.returncode == 2, p.stdout + p.stderr
    assert message in p.stderr and p.stderr.startswith("agentforge: error:")


def test_eval_binary_kernel_file_exits_2(tmp_path):
    k = tmp_path / "k.asp"
    k.write_bytes(b"\xff\xfe\x00kernel")
    p = agentforge("eval", SOFTMAX, k)
    assert p.returncode == 2 and "UTF-8" in p.stderr


def test_baseline_writes_kernels_and_json(tmp_path):
    out = tmp_path / "bl"
    p = agentforge("baseline", ROOT / "evals" / "suite" / "rmsnorm.py", "-o", out, "--json")
    assert p.returncode == 0, p.stdout + p.stderr
    d = json.loads(p.stdout)
    ev = d["evaluation"]
    assert ev["verified"] is True and ev["candidate"] == "baseline" and ev["speedup"] == 1.0
    for key in SCORE_FIELDS:
        assert key in ev
    assert d["kernels"] and d["reconfigurations"] == len(d["kernels"]) - 1
    saved = json.loads((out / "baseline.json").read_text())
    assert saved["evaluation"]["verified"] is True and saved["kernels"] == d["kernels"]
    for row in d["kernels"]:
        src = (out / row["file"]).read_text()
        assert src.startswith("#") and "kernel " in src
        assert row["seconds"] > 0 and 0 < row["roofline_fraction"] <= 1
    assert sorted(f.name for f in out.glob("*.asp")) == sorted(r["file"] for r in d["kernels"])


def test_baseline_unsupported_op_exits_2():
    p = agentforge("baseline", UNSUPPORTED)
    assert p.returncode == 2, p.stdout + p.stderr
    assert "not supported: aten.sort" in p.stderr


def test_baseline_missing_task_exits_2():
    p = agentforge("baseline", ROOT / "evals" / "suite" / "no_such_task.py", "--json")
    assert p.returncode == 2 and "no such task file" in p.stderr and p.stdout == ""
