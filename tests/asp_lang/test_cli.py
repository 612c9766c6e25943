"""Specification of the ``asp`` command line (asp_lang/cli.py), run as a user would: in a
subprocess, through ``python -m asp_lang.cli`` and the ``asp`` console script.

Exit codes: 0 success, 1 ``fmt --check`` found a difference, 2 a user error shown as
``file:line:col: error: ...`` (or ``asp: error: ...`` for the command line itself), never a
Python traceback.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

import asp_lang

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "docs" / "examples"
NAMES = sorted(p.stem for p in EXAMPLES.glob("*.asp"))
MODULE = [sys.executable, "-m", "asp_lang.cli"]
_script = Path(sys.executable).with_name("asp")
SCRIPT = [str(_script)] if _script.is_file() else ([shutil.which("asp")] if shutil.which("asp") else None)

PROFILE_FIELDS = {
    "kernel": str, "machine": str, "emulator": str, "cycles": float, "seconds": float, "flops": float,
    "hbm_bytes": float, "ddr_bytes": float, "hbm_bandwidth_gbs": float, "hbm_bandwidth_fraction": float,
    "pcu_allocated": int, "pmu_allocated": int, "agcu_allocated": int, "sram_bytes": float,
    "pcu_utilisation": float, "pmu_utilisation": float, "sram_utilisation": float, "bottleneck": str,
    "roofline_cycles": float, "roofline_seconds": float, "roofline_fraction": float, "roofline_limit": str,
    "sections": int, "reconfig_cycles": (int, float), "sizes": dict, "notes": list, "routing": dict,
    "ops": list,
}
OP_FIELDS = {"index", "op", "line", "outputs", "elements", "busy_cycles", "limit", "par", "pcus", "pmus",
             "flops", "offchip_bytes", "section"}


def asp(*args, cwd=None, cmd=None, timeout=60) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([*(cmd or MODULE), *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout, env=env)


def line_no(path: Path, needle: str) -> int:
    return next(i for i, s in enumerate(path.read_text().splitlines(), 1) if needle in s)


def assert_user_error(r: subprocess.CompletedProcess, *needles: str):
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout
    assert "internal error" not in r.stderr
    assert r.stderr.strip(), "an error must say what went wrong"
    for n in needles:
        assert n in r.stderr, (n, r.stderr)


def assert_located(r: subprocess.CompletedProcess, path: Path | str, line: int, col: int | None = None,
                   kind: str | None = None):
    assert_user_error(r)
    first = r.stderr.splitlines()[0]
    col_re = str(col) if col is not None else r"\d+"
    assert re.match(re.escape(f"{path}:{line}:") + col_re + ": error: ", first), first
    if kind:
        assert first.endswith(f"[{kind}]")
    if col is not None:
        caret = r.stderr.splitlines()[2]
        assert caret.startswith(" " * (col - 1) + "^")


# ------------------------------------------------------------------ examples

def _all(cmds):
    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(lambda a: asp(*a), cmds))


SUBPROCESS_EXAMPLES = ["vector_add", "softmax_online", "flash_attention", "moe_top1"]


@pytest.mark.parametrize("command", ["check", "fmt", "run", "profile"])
def test_examples_succeed_in_a_subprocess(command):
    results = _all([(command, EXAMPLES / f"{n}.asp") for n in SUBPROCESS_EXAMPLES])
    for name, r in zip(SUBPROCESS_EXAMPLES, results):
        assert r.returncode == 0, (name, r.stderr)
        assert r.stderr == "", (name, r.stderr)
        assert r.stdout
        if command == "fmt":  # the examples are canonically formatted: fmt prints them unchanged
            assert r.stdout == (EXAMPLES / f"{name}.asp").read_text()
        if command == "profile":
            assert "cycles" in r.stdout and "roofline" in r.stdout and "bottleneck" in r.stdout


@pytest.mark.parametrize("name", NAMES)
def test_every_example_succeeds_with_every_command(name, capsys):
    """The same entry point in-process (a subprocess per example and command would be slow)."""
    from asp_lang.cli import main
    path = str(EXAMPLES / f"{name}.asp")
    for args in (["check", path], ["check", path, "--json"], ["fmt", path], ["fmt", "--check", path],
                 ["run", path], ["profile", path], ["profile", path, "--json", "--timing-only", "--machine", "rdu-mini"]):
        assert main(args) == 0, args
        out, err = capsys.readouterr()
        assert out or args[:2] == ["fmt", "--check"]
        assert err == "", (args, err)
        if "--json" in args:
            json.loads(out)


@pytest.mark.skipif(SCRIPT is None, reason="the asp console script is not installed")
def test_console_script_matches_the_module():
    ex = EXAMPLES / "softmax_online.asp"
    for args in (["profile", ex, "--json", "--timing-only"], ["--version"]):
        a, b = asp(*args, cmd=SCRIPT), asp(*args)
        assert a.returncode == b.returncode == 0
        assert a.stdout == b.stdout
    bad = asp("check", "no-such-file.asp", cmd=SCRIPT)
    assert_user_error(bad, "no-such-file.asp")


def test_version_and_help():
    r = asp("--version")
    assert r.returncode == 0 and asp_lang.__version__ in r.stdout and asp_lang.EMULATOR_VERSION in r.stdout
    r = asp("--help")
    assert r.returncode == 0
    for c in ("check", "fmt", "run", "profile"):
        assert c in r.stdout


def test_no_command_is_a_usage_error():
    r = asp()
    assert r.returncode == 2 and "Traceback" not in r.stderr


# ------------------------------------------------------------------ --json

def test_profile_json_has_the_documented_fields_and_matches_the_library():
    ex = EXAMPLES / "gemm.asp"
    r = asp("profile", ex, "--json", "--machine", "rdu-mini")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert set(PROFILE_FIELDS) <= set(d)
    for k, t in PROFILE_FIELDS.items():
        assert isinstance(d[k], t if isinstance(t, tuple) else (t, int) if t is float else t), (k, d[k])
    assert d["kernel"] == "gemm" and d["machine"] == "rdu-mini"
    assert d["sizes"] == {"M": 512, "N": 512, "K": 512, "TM": 128, "TN": 128, "TK": 128}
    assert d["cycles"] >= d["roofline_cycles"] and 0 < d["roofline_fraction"] <= 1
    assert d["sections"] >= 1
    assert d["ops"] and all(set(o) >= OP_FIELDS for o in d["ops"])
    lib = asp_lang.profile(asp_lang.compile_file(ex, machine="rdu-mini")).to_dict()
    assert d == json.loads(json.dumps(lib))


def test_profile_json_sizes_and_timing_only():
    r = asp("profile", EXAMPLES / "softmax_online.asp", "--json", "--timing-only",
            "--sizes", "M=4096, N=393216,T=2048")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["sizes"] == {"M": 4096, "N": 393216, "R": 4, "T": 2048}
    assert d["hbm_bytes"] == 2 * 4096 * 393216 * 4


def test_check_json_fields():
    r = asp("check", EXAMPLES / "moe_top1.asp", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert {"kernel", "ok", "sizes", "operators", "sections", "units", "notes", "streams"} <= set(d)
    assert d["ok"] is True and d["kernel"] == "moe_top1"
    assert d["operators"] == len(asp_lang.compile_file(EXAMPLES / "moe_top1.asp").nodes)
    assert set(d["units"]) >= {"pcus", "pmus", "agcus"}
    assert "parts" in d["streams"] and "?" in d["streams"]["parts"]


def test_run_json_fields():
    r = asp("run", EXAMPLES / "vector_add.asp", "--json", "--seed", "3")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert {"kernel", "machine", "sizes", "inputs", "results", "emulator"} <= set(d)
    res = d["results"]["c"]
    assert {"shape", "dtype", "mean", "abs_max", "nonfinite", "head"} <= set(res)
    assert res["shape"] == [65536] and res["dtype"] == "float32" and res["nonfinite"] == 0
    prog = asp_lang.compile_file(EXAMPLES / "vector_add.asp")
    c = asp_lang.run(prog, asp_lang.random_inputs(prog, 3))["c"]
    assert res["head"] == pytest.approx(c[:6].tolist())
    assert res["mean"] == pytest.approx(float(c.mean()), rel=1e-6, abs=1e-9)


def test_run_text_output_names_each_result():
    r = asp("run", EXAMPLES / "layernorm.asp")
    assert r.returncode == 0 and r.stdout.startswith("y: float32[256, 1024]")


def test_routing_counts_are_reported():
    r = asp("profile", EXAMPLES / "moe_top1.asp", "--json", "--timing-only", "--routing", "counts=1:2:3:58")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["routing"] == {"mode": "counts", "counts": [1, 2, 3, 58]}
    r = asp("profile", EXAMPLES / "moe_top1.asp", "--routing", "counts=1:2:3")
    assert_located(r, EXAMPLES / "moe_top1.asp", line_no(EXAMPLES / "moe_top1.asp", "partition("),
                   kind="RoutingError")
    assert_user_error(asp("profile", EXAMPLES / "moe_top1.asp", "--routing", "zipf"), "--routing")


# ------------------------------------------------------------------ errors

BAD_KERNELS = {
    # name: (text, line, col, kind)
    "parse.asp": ("kernel k(x: f32[N]) -> (y: f32[N]) {\n  sizes N = 64\n  xs = load(x, tile=[16]) $\n}\n",
                  3, 27, "ParseError"),
    "affine.asp": ("kernel k(x: f32[N]) -> (y: f32[N]) {\n  sizes N = 64\n  xs = load(x, tile=[16])\n"
                   "  ws = load(x, tile=[16])\n  store(y, xs)\n}\n", 4, 8, "AffineError"),
    "shape.asp": ("kernel k(x: f32[N]) -> (y: f32[N]) {\n  sizes N = 64\n  xs = load(x, tile=[16, 4])\n"
                  "  store(y, xs)\n}\n", 3, 21, "ShapeError"),
    "size.asp": ("kernel k(x: f32[N]) -> (y: f32[N]) {\n  sizes N = 64\n  xs = load(x, tile=[24])\n"
                 "  store(y, xs)\n}\n", 3, 21, "SizeError"),
}


def test_bad_kernels_exit_2_with_a_located_error(tmp_path):
    cmds = ["check", "run", "profile", "check"]
    for command, (name, (text, line, col, kind)) in zip(cmds, BAD_KERNELS.items()):
        p = tmp_path / name
        p.write_text(text)
        r = asp(command, p)
        assert_located(r, p, line, col, kind)
        assert r.stdout == ""
        # the source line is quoted
        assert r.stderr.splitlines()[1] == text.splitlines()[line - 1]


def test_fmt_of_unparsable_file_exits_2(tmp_path):
    text, line, col, kind = BAD_KERNELS["parse.asp"]
    p = tmp_path / "parse.asp"
    p.write_text(text)
    for args in (["fmt", p], ["fmt", "--check", p], ["fmt", "-w", p]):
        assert_located(asp(*args), p, line, col, kind)
    assert p.read_text() == text  # never rewritten


def test_resource_error_on_a_small_machine(tmp_path):
    r = asp("check", EXAMPLES / "softmax_online.asp", "--machine", "rdu-mini",
            "--sizes", "M=8,N=262144,T=2048")
    assert_located(r, EXAMPLES / "softmax_online.asp", line_no(EXAMPLES / "softmax_online.asp", "bufferize("),
                   kind="ResourceError")


def test_missing_file(tmp_path):
    for command in ("check", "fmt"):
        assert_user_error(asp(command, tmp_path / "absent.asp"), "absent.asp", "no such file")


def test_not_a_text_file(tmp_path):
    p = tmp_path / "bin.asp"
    p.write_bytes(b"\xff\xfe\x00kernel\x80")
    assert_user_error(asp("check", p), "bin.asp")


def test_empty_file(tmp_path):
    p = tmp_path / "empty.asp"
    p.write_text("")
    r = asp("check", p)
    assert_user_error(r, "ParseError")
    assert r.stderr.startswith(f"{p}:1:1: error: ")


@pytest.mark.parametrize("sizes", ["M", "M=x", "1M=4", "=4"])
def test_bad_sizes_syntax(sizes):
    r = asp("check", EXAMPLES / "gemm.asp", "--sizes", sizes)
    assert_user_error(r, "--sizes")


def test_unknown_size_name_lists_the_kernels_sizes():
    r = asp("check", EXAMPLES / "gemm.asp", "--sizes", "Q=4")
    assert_user_error(r, "'Q'", "TM", "SizeError")


@pytest.mark.parametrize("sizes,needle", [("M=0", "positive"), ("M=-128", "positive"),
                                          ("M=500", "does not divide")])
def test_bad_size_values(sizes, needle):
    assert_user_error(asp("check", EXAMPLES / "gemm.asp", "--sizes", sizes), needle, "SizeError")


def test_unknown_machine():
    r = asp("check", EXAMPLES / "gemm.asp", "--machine", "tpu-v9")
    assert_user_error(r, "tpu-v9", "unknown machine", "rdu-mini", "sn40l", "MachineError")


def _preset(name="rdu-mini") -> str:
    return resources.files("asp_lang").joinpath("machines").joinpath(f"{name}.toml").read_text()


def test_malformed_machine_toml(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("name = [\n")
    assert_user_error(asp("check", EXAMPLES / "gemm.asp", "--machine", bad), str(bad), "not valid TOML",
                      "MachineError")
    bad.write_text(_preset().replace("count = 64\nsram_kib", "count = -64\nsram_kib"))
    r = asp("profile", EXAMPLES / "gemm.asp", "--machine", bad)
    assert_user_error(r, "[pmu] count must be positive")
    line = bad.read_text().splitlines().index("count = -64") + 1
    assert r.stderr.startswith(f"{bad}:{line}:1: error:")
    bad.write_text(_preset().replace("[hbm]\n", "[hbm]\nchannels = 8\n"))
    assert_user_error(asp("check", EXAMPLES / "gemm.asp", "--machine", bad), "channels")


def test_user_machine_file(tmp_path):
    m = tmp_path / "m.toml"
    m.write_text(_preset().replace('name = "rdu-mini"', 'name = "mine"'))
    r = asp("profile", EXAMPLES / "vector_add.asp", "--machine", m, "--json", "--timing-only")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["machine"] == "mine"


def test_unknown_option_is_a_usage_error():
    r = asp("check", EXAMPLES / "gemm.asp", "--fast")
    assert r.returncode == 2 and "Traceback" not in r.stderr


# ------------------------------------------------------------------ fmt

UNFORMATTED = """kernel   vector_add(a: f32[N], b: f32[N]) -> (c: f32[N]) {
  fn add(x, y) = (x + y)
  sizes N = 65536
     xa = load(a, tile=[1024],par=2)
  xb = load(b, tile=[1024], par=2)
  xc = map(xa, xb, fn=add, par=4)
  store(c, xc, par=2)
}
"""


def test_fmt_check_and_write(tmp_path):
    p = tmp_path / "va.asp"
    p.write_text(UNFORMATTED)
    r = asp("fmt", "--check", p)
    assert r.returncode == 1 and "va.asp" in r.stderr and "Traceback" not in r.stderr
    assert p.read_text() == UNFORMATTED
    r = asp("fmt", p)
    assert r.returncode == 0
    canonical = asp_lang.format_kernel(asp_lang.parse(UNFORMATTED))
    assert r.stdout == canonical
    assert p.read_text() == UNFORMATTED  # plain fmt only prints
    r = asp("fmt", "-w", p)
    assert r.returncode == 0 and r.stdout == ""
    assert p.read_text() == canonical
    assert asp("fmt", "--check", p).returncode == 0
    assert asp("fmt", "--write", p).returncode == 0 and p.read_text() == canonical
    # the rewritten kernel means the same thing
    assert asp_lang.parse(canonical) == asp_lang.parse(UNFORMATTED)


@pytest.mark.parametrize("name", NAMES[:4])
def test_fmt_check_passes_on_examples(name):
    assert asp("fmt", "--check", EXAMPLES / f"{name}.asp").returncode == 0


def test_fmt_check_and_write_are_exclusive(tmp_path):
    p = tmp_path / "va.asp"
    p.write_text(UNFORMATTED)
    r = asp("fmt", "--check", "-w", p)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert p.read_text() == UNFORMATTED


# ------------------------------------------------------------------ run --inputs / --output

def test_run_inputs_with_wrong_shapes_is_an_input_error(tmp_path):
    npz = tmp_path / "in.npz"
    np.savez(npz, a=np.ones(5, np.float32), b=np.ones(65536, np.float32))
    ex = EXAMPLES / "vector_add.asp"
    r = asp("run", ex, "--inputs", npz)
    assert_user_error(r, "InputError", "'a'", "[5]", "[65536]")
    col = ex.read_text().splitlines()[1].index("a: f32") + 1
    assert_located(r, ex, 2, col, "InputError")


def test_run_inputs_missing_or_extra_arrays(tmp_path):
    ex = EXAMPLES / "vector_add.asp"
    npz = tmp_path / "in.npz"
    np.savez(npz, a=np.ones(65536, np.float32))
    assert_user_error(asp("run", ex, "--inputs", npz), "InputError", "missing", "b")
    np.savez(npz, a=np.ones(65536, np.float32), b=np.ones(65536, np.float32), z=np.ones(3))
    assert_user_error(asp("run", ex, "--inputs", npz), "InputError", "z")
    np.savez(npz, a=np.ones(65536, np.float32), b=np.array(["x"] * 65536))
    assert_user_error(asp("run", ex, "--inputs", npz), "InputError")


def test_run_inputs_unreadable(tmp_path):
    ex = EXAMPLES / "vector_add.asp"
    bad = tmp_path / "in.npz"
    bad.write_text("not an npz")
    assert_user_error(asp("run", ex, "--inputs", bad), "--inputs")
    assert_user_error(asp("run", ex, "--inputs", tmp_path / "absent.npz"), "absent.npz")
    ok = tmp_path / "ok.npz"
    np.savez(ok, a=np.ones(65536, np.float32), b=np.ones(65536, np.float32))
    assert_user_error(asp("run", ex, "--inputs", ok, "--random-inputs"), "--inputs")


def test_run_output_matches_the_interpreter(tmp_path):
    ex = EXAMPLES / "layernorm.asp"
    prog = asp_lang.compile_file(ex)
    inputs = asp_lang.random_inputs(prog, seed=11)
    npz, out = tmp_path / "in.npz", tmp_path / "out.npz"
    np.savez(npz, **inputs)
    r = asp("run", ex, "--inputs", npz, "--output", out)
    assert r.returncode == 0, r.stderr
    expected = asp_lang.run(prog, inputs)
    with np.load(out) as z:
        assert sorted(z.files) == sorted(expected)
        for k in expected:
            assert z[k].dtype == expected[k].dtype and z[k].shape == expected[k].shape
            assert z[k].tobytes() == expected[k].tobytes()


def test_run_output_with_random_inputs_is_seeded(tmp_path):
    ex = EXAMPLES / "rmsnorm.asp"
    outs = []
    for i, seed in enumerate((5, 5, 6)):
        o = tmp_path / f"o{i}.npz"
        assert asp("run", ex, "--seed", seed, "--output", o).returncode == 0
        with np.load(o) as z:
            outs.append(z["y"].copy())
    prog = asp_lang.compile_file(ex)
    assert outs[0].tobytes() == asp_lang.run(prog, asp_lang.random_inputs(prog, 5))["y"].tobytes()
    assert outs[0].tobytes() == outs[1].tobytes()
    assert outs[0].tobytes() != outs[2].tobytes()


def test_run_time_routing_error_is_located(tmp_path):
    src = """kernel route(x: f32[T, D], i: i32[T, 1]) -> (y: f32[T, D]) {
  sizes T = 8
  sizes D = 4
  fn id(t) = t
  xs = load(x, tile=[1, D])
  ids = load(i, tile=[1, 1])
  sel = selector(ids, n=2)
  sa, sb = copy(sel)
  parts = partition(xs, sa)
  h = map(parts, fn=id)
  merged = merge(h, sb)
  flat = flatten(merged, dims=[0, 1])
  store(y, flat)
}
"""
    k = tmp_path / "route.asp"
    k.write_text(src)
    npz = tmp_path / "in.npz"
    np.savez(npz, x=np.ones((8, 4), np.float32), i=np.full((8, 1), 7, np.int32))
    assert_located(asp("run", k, "--inputs", npz), k, 7, 9, "RoutingError")
    np.savez(npz, x=np.ones((8, 4), np.float32), i=np.arange(8, dtype=np.int32).reshape(8, 1) % 2)
    assert asp("run", k, "--inputs", npz).returncode == 0


def test_closed_output_pipe_is_not_an_internal_error():
    """``asp profile k.asp --json | head -1``: the reader going away is no bug in asp."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.Popen([*MODULE, "profile", str(EXAMPLES / "moe_top1.asp"), "--json", "--timing-only"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    p.stdout.close()
    err = p.stderr.read()
    rc = p.wait(timeout=60)
    p.stderr.close()
    assert "internal error" not in err and "Traceback" not in err and "Exception ignored" not in err
    assert rc != 3
