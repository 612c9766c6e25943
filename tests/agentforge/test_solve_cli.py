"""`agentforge solve` end to end: offline by default, an OpenAI-compatible server (scripted, on
127.0.0.1) with a recorded transcript, and the same run replayed without the server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agentforge.cli import main
from llm_server import ScriptedServer, chat, status
from test_llm_roles import PLAN, RELU_KERNEL

SUITE = Path(__file__).resolve().parents[2] / "evals" / "suite"
KEY = "sk-test-SECRET-do-not-write-0123456789"


def _run(capsys, *argv) -> tuple[int, dict]:
    rc = main(list(argv))
    out = capsys.readouterr().out
    return rc, json.loads(out) if out.strip().startswith("{") else {}


def test_offline_solve_writes_the_best_verified_candidate(tmp_path, capsys):
    rc, res = _run(capsys, "solve", str(SUITE / "silu_mul.py"), "-o", str(tmp_path / "out"), "--json")
    assert rc == 0 and res["verified"] and res["speedup"] > 1.0
    assert res["llm_calls"] == 0 and res["plan_cache_hit"] is False
    assert (tmp_path / "out" / "plan.json").exists() and list((tmp_path / "out" / "kernels").glob("*.asp"))


def test_solve_against_an_openai_compatible_server_then_replay(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    transcript = tmp_path / "t.jsonl"
    with ScriptedServer() as srv:
        srv.push(chat(json.dumps(PLAN)), status(429, headers={"Retry-After": "0"}),
                 chat(f"Here is the kernel:\n```asp\n{RELU_KERNEL}```"))
        rc, res = _run(capsys, "solve", str(SUITE / "relu.py"), "--llm", "openai", "--model", "test-model",
                       "--base-url", srv.url, "--transcript", str(transcript), "-o", str(tmp_path / "out"),
                       "--json", "--attempts", "2")
        auth = [v for r in srv.chat_requests for k, v in r.headers.items() if k.lower() == "authorization"]
        assert auth and all(a == f"Bearer {KEY}" for a in auth)
    assert rc == 0 and res["verified"], res.get("reason")
    assert res["llm_calls"] >= 2 and res["tokens"]["prompt"] > 0
    assert (tmp_path / "out" / "kernel.asp").read_text() == RELU_KERNEL
    # the same run, replayed from the transcript, with no server at all
    monkeypatch.delenv("OPENAI_API_KEY")
    rc2, res2 = _run(capsys, "solve", str(SUITE / "relu.py"), "--llm", "replay", "--transcript", str(transcript),
                     "--json", "--attempts", "2")
    assert rc2 == 0 and res2["verified"] and res2["speedup"] == pytest.approx(res["speedup"])
    for f in tmp_path.rglob("*"):
        if f.is_file():
            assert KEY not in f.read_text(errors="ignore"), f"the API key leaked into {f}"


def test_llm_flags_are_checked_before_any_work(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert main(["solve", str(SUITE / "relu.py"), "--llm", "openai"]) == 2            # no --model
    assert main(["solve", str(SUITE / "relu.py"), "--llm", "replay"]) == 2            # no --transcript
    assert main(["solve", str(SUITE / "relu.py"), "--llm", "openai", "--model", "m",
                 "--base-url", "http://127.0.0.1:9/v1"]) == 2                          # no key: preflight
    err = capsys.readouterr().err
    assert "OPENAI_API_KEY" in err and "Traceback" not in err


def test_solve_reads_the_llm_table_of_agentforge_toml(tmp_path, capsys, monkeypatch):
    # model, endpoint, key variable and prices from the project's agentforge.toml; flags would override
    monkeypatch.setenv("AF_SOLVE_KEY", KEY)
    monkeypatch.chdir(tmp_path)
    with ScriptedServer() as srv:
        (tmp_path / "agentforge.toml").write_text(
            f'[llm]\nmodel = "test-model"\nbase_url = "{srv.url}"\napi_key_env = "AF_SOLVE_KEY"\n'
            'price_per_mtok_in = 1.0\nprice_per_mtok_out = 4.0\n')
        srv.push(chat(json.dumps(PLAN)), chat(f"```asp\n{RELU_KERNEL}```"))
        rc, res = _run(capsys, "solve", str(SUITE / "relu.py"), "--llm", "openai", "--json", "--attempts", "1")
        sent = [r.body["model"] for r in srv.chat_requests]
    assert rc == 0 and res["verified"]
    assert sent == ["test-model", "test-model"]
    assert res["cost"] == pytest.approx(2 * (100 * 1.0 + 20 * 4.0) / 1e6)
    (tmp_path / "agentforge.toml").write_text('[llm]\napi_key = "sk-in-a-file"\n')
    assert main(["solve", str(SUITE / "relu.py"), "--llm", "openai", "--model", "m"]) == 2
    assert "secrets are never read from a file" in capsys.readouterr().err


def test_solve_exits_1_when_the_budget_runs_out_without_a_verified_kernel(tmp_path, capsys, monkeypatch):
    from test_llm_roles import BAD_KERNEL

    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with ScriptedServer() as srv:
        srv.push(chat(json.dumps(PLAN)), chat(f"```asp\n{BAD_KERNEL}```"))
        rc, res = _run(capsys, "solve", str(SUITE / "relu.py"), "--llm", "openai", "--model", "test-model",
                       "--base-url", srv.url, "--json", "--attempts", "1", "-o", str(tmp_path / "out"))
    assert rc == 1 and res["verified"] is False and res["reason_code"] == "compile"
    assert res["attempts"] == 1 and res["llm_calls"] == 2
    assert not (tmp_path / "out").exists()          # nothing is written without a verified kernel
