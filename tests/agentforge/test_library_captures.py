"""Stored task captures: a library holds each task's captured graphs, so loading it into PyTorch does not
run torch.export per task (~0.5 s each); a library without them loads as before, and a damaged, stale or
inconsistent file is never used (a warning says why, and the task is captured instead)."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest

from agentforge.aten import AtenGraph, AtenNode, Ref, TensorSpec
from agentforge.capture import capture_at
from agentforge.library import (Library, _content_digest, captures_path, captures_status, decode_graph,
                                encode_graph, read_captures)
from agentforge.signature import signature
from agentforge.torch import load_library
from agentforge.torch.ops import StoredCapturesWarning


def _one_task_copy(torch_library: Path, tmp_path: Path, op: str = "rmsnorm_small") -> Path:
    """A copy of the session library holding only ``op``'s kernels (loading it captures one task at most)."""
    out = tmp_path / "library"
    shutil.copytree(torch_library, out)
    m = json.loads((out / "manifest.json").read_text())
    m["kernels"] = [k for k in m["kernels"] if k["op"] == op]
    assert m["kernels"], f"the session library has no {op}"
    (out / "manifest.json").write_text(json.dumps(m))
    return out


def _problems(tl, op: str) -> dict[str, str]:
    fam = tl.families[op]
    return {json.dumps(v.sizes, sort_keys=True): v.graph.structure_key for vs in fam.problems.by_key.values()
            for v in vs}


def test_a_library_loads_every_problem_from_its_stored_captures_and_they_are_the_tasks_graphs(torch_library):
    lib = Library.open(torch_library)
    with warnings.catch_warnings():
        warnings.simplefilter("error", StoredCapturesWarning)
        tl = load_library(torch_library, namespace="rdu_stored")
    for op, fam in tl.families.items():
        assert fam.graph_sources["captured"] == 0 and fam.graph_sources["stored"] > 0, (op, fam.graph_sources)
        for vs in fam.problems.by_key.values():
            for v in vs:   # exactly what capturing the task now gives (so the same kernel binding and key)
                g = capture_at(fam.task_of(v.entry), v.sizes, meta=True)
                assert v.graph == g and v.graph.structure_key == g.structure_key
                assert v.graph.param_targets == g.param_targets
    assert all((torch_library / captures_path(e.task_file)).is_file() for e in lib.entries)


def test_graph_encoding_round_trips_tuples_lists_infinities_and_multi_output_nodes():
    g = AtenGraph([TensorSpec("x", (2, 3), "f32")], [TensorSpec("p_w", (3,), "f32")],
                  [AtenNode("m", "aten.max.dim", (Ref("x"), -1, True), {},
                            (TensorSpec("m.0", (2, 1), "f32"), TensorSpec("m.1", (2, 1), "i64"))),
                   AtenNode("g", "getitem", (Ref("m"), 0), {}, TensorSpec("g", (2, 1), "f32")),
                   AtenNode("f", "aten.masked_fill.Scalar", (Ref("x"), Ref("g"), float("-inf")),
                            {"dims": [1, (2, 3)], "nan": float("nan"), "s": None, "b": False, "one": 1.0},
                            TensorSpec("f", (2, 3), "f32"))],
                  [Ref("f"), Ref("g")], {}, {"p_w": "w"})
    back = decode_graph(json.loads(json.dumps(encode_graph(g))))
    assert repr(back) == repr(g) and back.param_targets == g.param_targets
    assert isinstance(back.nodes[2].kwargs["dims"][1], tuple) and isinstance(back.nodes[2].kwargs["one"], float)


def test_a_library_without_stored_captures_loads_as_before(torch_library, tmp_path):
    lib = _one_task_copy(torch_library, tmp_path)
    stored = _problems(load_library(lib, namespace="rdu_cap_a"), "rmsnorm_small")
    for f in lib.glob("tasks/*/*.captures.json"):
        f.unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("error", StoredCapturesWarning)     # an older library is not an error
        tl = load_library(lib, namespace="rdu_cap_b")
    assert tl.families["rmsnorm_small"].graph_sources["stored"] == 0
    assert _problems(tl, "rmsnorm_small") == stored


def _edit(lib: Path, change, redigest: bool) -> None:
    e = Library.open(lib).entries[0]
    path = lib / captures_path(e.task_file)
    d = json.loads(path.read_text())
    change(d)
    if redigest:
        d["digest"] = _content_digest({k: v for k, v in d.items() if k != "digest"})
    path.write_text(json.dumps(d))


def _eps_to(d: dict, eps: float, resign: bool) -> None:
    """Change the rmsnorm's epsilon in every stored graph (a different problem than the one verified)."""
    for rec in d["graphs"]:
        for n in rec["graph"]["nodes"]:
            if n[1] == "aten.add.Tensor" and isinstance(n[2], dict) and isinstance(n[2]["tuple"][1], float):
                n[2]["tuple"][1] = eps
        if resign:
            rec["sized_key"] = signature(decode_graph(rec["graph"])).sized_key()


@pytest.mark.parametrize("case, change, redigest, reason", [
    ("damaged", lambda d: _eps_to(d, 0.5, False), False, "does not match its digest"),
    ("edited consistently", lambda d: _eps_to(d, 0.5, True), True, "signature manifest entry"),
    ("other torch", lambda d: d.update(torch="1.0.0"), True, "written for torch '1.0.0'"),
    ("not json", None, False, "stored captures"),
])
def test_a_bad_or_stale_stored_capture_is_never_used_and_says_why(torch_library, tmp_path, case, change, redigest,
                                                                   reason):
    lib = _one_task_copy(torch_library, tmp_path)
    want = _problems(load_library(lib, namespace="rdu_cap_c"), "rmsnorm_small")
    if change is None:
        e = Library.open(lib).entries[0]
        (lib / captures_path(e.task_file)).write_text("{not json")
    else:
        _edit(lib, change, redigest)
    with pytest.warns(StoredCapturesWarning, match=reason):
        tl = load_library(lib, namespace="rdu_cap_d")
    fam = tl.families["rmsnorm_small"]
    assert fam.graph_sources["stored"] == 0, case
    assert _problems(tl, "rmsnorm_small") == want       # what the task captures now, never the edited graph


def test_a_task_file_edited_after_its_captures_were_stored_makes_them_stale(torch_library, tmp_path):
    lib = _one_task_copy(torch_library, tmp_path)
    e = Library.open(lib).entries[0]
    task = lib / e.task_file
    task.write_text(task.read_text() + "\n# edited\n")
    st = read_captures(lib, e.task_file)
    assert not st.graphs and "another version of the task" in st.problem


# ---------------------------------------------------------------------- `library verify` checks them too

def _verify(lib: Path, capsys, *flags: str) -> tuple[int, str]:
    from agentforge.cli import main

    code = main(["library", "verify", str(lib), *flags])
    return code, capsys.readouterr().out


@pytest.mark.parametrize("case, change, redigest, reason", [
    ("damaged", lambda d: _eps_to(d, 0.5, False), False, "does not match its digest"),
    ("edited consistently", lambda d: _eps_to(d, 0.5, True), True, "signature manifest entry"),
    ("other torch", lambda d: d.update(torch="1.0.0"), True, "written for torch '1.0.0'"),
    ("other signature version", lambda d: d.update(signature_version=-1), True, "written for signature_version -1"),
])
def test_verify_judges_a_stored_capture_as_the_loader_does(torch_library, tmp_path, case, change, redigest, reason):
    """One check (library.stored_captures) for both: verify calls a file stale exactly when loading warns."""
    lib = _one_task_copy(torch_library, tmp_path)
    e = Library.open(lib).entries[0]
    assert captures_status(Library.open(lib), e.task_file, {})["status"] == "ok"
    _edit(lib, change, redigest)
    status = captures_status(Library.open(lib), e.task_file, {})
    assert status["status"] == "stale" and reason in status["reason"], case
    assert status["file"] == captures_path(e.task_file)
    with pytest.warns(StoredCapturesWarning, match=reason):
        load_library(lib, namespace=f"rdu_cap_v{abs(hash(case)) % 10 ** 6}")


def test_verify_passes_a_library_without_stored_captures_and_says_loading_captures_its_tasks(torch_library, tmp_path,
                                                                                             capsys):
    lib = _one_task_copy(torch_library, tmp_path)
    e = Library.open(lib).entries[0]
    (lib / captures_path(e.task_file)).unlink()                  # as a library written before them
    code, out = _verify(lib, capsys)
    assert code == 0, out
    assert f"none  {captures_path(e.task_file)}: loading captures this task" in out
    assert "stored captures: 0 ok, 1 missing (captured at load), 0 stale or damaged" in out


def test_verify_fails_on_a_stale_stored_capture_with_its_reason_and_the_fix_and_recapture_rewrites_it(
        torch_library, tmp_path, capsys):
    lib = _one_task_copy(torch_library, tmp_path)
    e = Library.open(lib).entries[0]
    rel = captures_path(e.task_file)
    good = (lib / rel).read_text()
    _edit(lib, lambda d: d.update(torch="1.0.0"), True)            # as after a torch upgrade
    code, out = _verify(lib, capsys)
    assert code == 1
    assert f"ok   {e.id}" in out                                     # the kernel itself is fine
    assert f"STALE {rel}: written for torch '1.0.0'" in out
    assert f"how to fix: agentforge library verify {lib} --recapture" in out
    code, out = _verify(lib, capsys, "--recapture")
    assert code == 0, out
    assert f"ok    {rel}: 2 stored graph(s), loading uses them" in out
    assert "stored captures: 1 ok, 0 missing (captured at load), 0 stale or damaged" in out
    assert (lib / rel).read_text() == good                       # exactly what Library.add wrote
    with warnings.catch_warnings():
        warnings.simplefilter("error", StoredCapturesWarning)
        tl = load_library(lib, namespace="rdu_cap_r")
    assert tl.families["rmsnorm_small"].graph_sources["captured"] == 0
