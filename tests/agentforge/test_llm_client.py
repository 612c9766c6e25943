"""agentforge.llm transport: config, retries, timeouts, structured output, budgets, transcripts,
preflight, and the reply parsers. Everything talks to a scripted server on 127.0.0.1."""

from __future__ import annotations

import json
import logging
import random
import pickle
import socket

import pytest

from agentforge.llm import (BudgetExceeded, LLMCallError, LLMClient, LLMConfig, LLMConfigError, Ledger,
                            PreflightError, RecordingClient, ReplayClient, ReplayError, make_client, preflight)
from agentforge.llm.client import backoff_delay, retry_after_seconds
from agentforge.llm.parsing import ReplyParseError, extract_json, extract_kernel
from agentforge.agents.schemas import PLAN_SCHEMA, REFLECTION_SCHEMA, normalize_plan, plan_checker
from agentforge.llm.validate import SchemaError, validate
from llm_server import ScriptedServer, chat, status

KEY_ENV = "AGENTFORGE_TEST_LLM_KEY"
KEY = "sk-test-SECRET-0123456789abcdef"
MSGS = [{"role": "system", "content": "You are a test."}, {"role": "user", "content": "Say something."}]

GOOD_PLAN = {"regions": [{"template": "row", "nodes": [0],
                          "params": {"rows": 4, "tm": None, "tn": None, "tk": None, "par": 8, "par_mem": 4,
                                     "par_epi": None, "compute": None, "memory": None},
                          "why": "one elementwise op"}],
             "strategy": "load row tiles, one map", "rewrites": [], "notes": ""}


@pytest.fixture
def key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    return KEY


@pytest.fixture
def server():
    with ScriptedServer() as srv:
        yield srv


def make_cfg(srv: ScriptedServer, **kw) -> LLMConfig:
    base = dict(base_url=srv.url, model="test-model", api_key_env=KEY_ENV, timeout_s=5.0, max_retries=3,
                backoff_base_s=0.01, backoff_cap_s=0.04, price_per_mtok_in=2.0, price_per_mtok_out=8.0)
    base.update(kw)
    return LLMConfig(**base)


class Sleeps(list):
    """Records backoff delays instead of sleeping."""

    def __call__(self, s: float) -> None:
        self.append(s)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def header(req, name: str) -> str | None:
    return next((v for k, v in req.headers.items() if k.lower() == name.lower()), None)


# ------------------------------------------------------------------ config

def test_config_errors_name_the_field(tmp_path):
    cases = [dict(timeout_s=-1), dict(max_retries=-1), dict(provider="anthropic"), dict(response_format="xml"),
             dict(base_url="api.openai.com"), dict(temperature=3), dict(max_prompt_tokens=10),
             dict(api_key_env="sk-abcdef123"), dict(seed=1.5), dict(max_cost=-1.0)]
    for kw in cases:
        with pytest.raises(LLMConfigError) as e:
            LLMConfig(**kw)
        assert e.value.field == next(iter(kw)), kw
    with pytest.raises(LLMConfigError) as e:
        LLMConfig.from_dict({"modle": "x"})
    assert e.value.field == "modle"
    with pytest.raises(LLMConfigError) as e:
        LLMConfig(provider="replay")
    assert e.value.field == "replay_path"
    with pytest.raises(LLMConfigError):
        LLMConfig().replace(timeout_s=0)
    p = tmp_path / "llm.toml"
    p.write_text('[llm]\nmodel = "m"\nbase_url = "http://127.0.0.1:1/v1"\nmax_calls = 3\n')
    cfg = LLMConfig.from_toml(p)
    assert (cfg.model, cfg.max_calls) == ("m", 3)


def test_errors_pickle():
    from agentforge.llm.errors import LLMConfigError as E

    for err in (E("timeout_s", "must be > 0"), BudgetExceeded("calls", 3, 1, 3), LLMCallError("x", 429, 2, True)):
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is type(err) and str(back) == str(err)


def test_temperature_none_is_not_sent(server, key):
    server.push(chat("t"))
    LLMClient(make_cfg(server, temperature=None, seed=None)).chat(MSGS)
    body = server.chat_requests[0].body
    assert "temperature" not in body and "seed" not in body


def test_config_never_holds_the_key(key):
    cfg = LLMConfig(api_key_env=KEY_ENV)
    assert key not in repr(cfg) and key not in json.dumps(cfg.to_dict())
    assert cfg.read_key() == key
    assert key not in repr(LLMClient(cfg))


# ------------------------------------------------------------------ calls, usage, cost

def test_plain_chat_usage_cost_and_auth_header(server, key):
    server.push(chat("hello", prompt_tokens=1000, completion_tokens=500, cached_tokens=None))
    client = LLMClient(make_cfg(server))
    r = client.chat(MSGS, role="worker")
    assert r.text == "hello" and r.parsed_json is None and r.attempts == 1 and r.calls == 1
    assert r.usage.prompt_tokens == 1000 and r.usage.completion_tokens == 500
    assert r.usage.cached_tokens is None
    assert r.cost == pytest.approx((1000 * 2.0 + 500 * 8.0) / 1e6)
    req = server.chat_requests[0]
    assert header(req, "authorization") == f"Bearer {key}"
    assert req.body["model"] == "test-model" and req.body["seed"] == 0 and req.body["messages"] == MSGS
    assert "response_format" not in req.body
    rec = client.ledger.records[0]
    assert (rec.role, rec.ok, rec.prompt_tokens, rec.cached_tokens) == ("worker", True, 1000, None)
    assert client.ledger.cost == pytest.approx(r.cost)


def test_cached_tokens_are_counted_and_priced(server, key):
    server.push(chat("hi", prompt_tokens=1000, completion_tokens=0, cached_tokens=600))
    client = LLMClient(make_cfg(server, price_per_mtok_cached=0.5))
    r = client.chat(MSGS)
    assert r.usage.cached_tokens == 600
    assert r.cost == pytest.approx((400 * 2.0 + 600 * 0.5) / 1e6)
    assert client.ledger.summary()["by_role"]["worker"]["cached_tokens"] == 600


def test_key_is_read_at_call_time(server, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    client = LLMClient(make_cfg(server))          # no key yet: constructing is fine
    with pytest.raises(PreflightError, match=KEY_ENV):
        client.chat(MSGS)
    assert server.requests == []                  # nothing was sent
    monkeypatch.setenv(KEY_ENV, "sk-later-key-000")
    server.push(chat("ok"))
    assert client.chat(MSGS).text == "ok"
    assert header(server.chat_requests[0], "authorization") == "Bearer sk-later-key-000"


# ------------------------------------------------------------------ retries

def test_429_honours_retry_after_then_succeeds(server, key):
    server.push(status(429, "slow down", headers={"Retry-After": "0"}), chat("ok"))
    sleeps = Sleeps()
    client = LLMClient(make_cfg(server), sleep=sleeps)
    r = client.chat(MSGS)
    assert r.text == "ok" and r.attempts == 2
    assert sleeps == [0.0]
    assert len(server.chat_requests) == 2
    assert client.ledger.calls == 1 and client.ledger.records[0].attempts == 2


def test_500_is_retried_with_seeded_jittered_backoff(server, key):
    server.push(status(500), status(502), chat("ok"))
    sleeps = Sleeps()
    cfg = make_cfg(server, seed=7)
    r = LLMClient(cfg, sleep=sleeps).chat(MSGS)
    assert r.text == "ok" and r.attempts == 3
    rng = random.Random(7)
    assert sleeps == [backoff_delay(0, rng, 0.01, 0.04), backoff_delay(1, rng, 0.01, 0.04)]
    assert 0.005 <= sleeps[0] <= 0.01 and 0.01 <= sleeps[1] <= 0.02


def test_backoff_is_capped_and_exponential():
    rng = random.Random(0)
    delays = [backoff_delay(i, rng, 1.0, 8.0) for i in range(8)]
    assert all(0.5 * min(8.0, 2 ** i) <= d <= min(8.0, 2 ** i) for i, d in enumerate(delays))
    assert max(delays) <= 8.0


def test_retry_after_forms():
    assert retry_after_seconds({"retry-after": "2"}) == 2.0
    assert retry_after_seconds({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert retry_after_seconds({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0   # in the past
    assert retry_after_seconds({"retry-after": "soon"}) is None
    assert retry_after_seconds({}) is None


def test_400_is_not_retried(server, key):
    server.push(status(400, "bad request"), chat("never sent"))
    sleeps = Sleeps()
    client = LLMClient(make_cfg(server), sleep=sleeps)
    with pytest.raises(LLMCallError) as e:
        client.chat(MSGS)
    assert e.value.status == 400 and e.value.attempts == 1 and not e.value.retryable
    assert len(server.chat_requests) == 1 and sleeps == []
    assert client.ledger.records[0].ok is False and "400" in client.ledger.records[0].error


def test_retries_exhausted(server, key):
    server.push(*[status(503)] * 4)
    sleeps = Sleeps()
    with pytest.raises(LLMCallError) as e:
        LLMClient(make_cfg(server, max_retries=3), sleep=sleeps).chat(MSGS)
    assert e.value.status == 503 and e.value.attempts == 4 and e.value.retryable
    assert len(sleeps) == 3 and len(server.chat_requests) == 4


def test_timeout_is_retried(server, key):
    server.push(chat("too late", delay_s=1.0), chat("in time"))
    client = LLMClient(make_cfg(server, timeout_s=0.3, max_retries=2), sleep=Sleeps())
    r = client.chat(MSGS)
    assert r.text == "in time" and r.attempts == 2


def test_timeout_without_retries_is_a_clear_error(server, key):
    server.push(chat("too late", delay_s=1.0))
    with pytest.raises(LLMCallError, match="timeout_s") as e:
        LLMClient(make_cfg(server, timeout_s=0.3, max_retries=0), sleep=Sleeps()).chat(MSGS)
    assert e.value.status is None and e.value.attempts == 1


def test_connection_refused_is_retried_then_fails(key):
    cfg = LLMConfig(base_url=f"http://127.0.0.1:{free_port()}/v1", model="m", api_key_env=KEY_ENV,
                    max_retries=1, backoff_base_s=0.0, backoff_cap_s=0.0, timeout_s=2.0)
    with pytest.raises(LLMCallError, match="cannot connect") as e:
        LLMClient(cfg, sleep=Sleeps()).chat(MSGS)
    assert e.value.attempts == 2 and e.value.status is None


# ------------------------------------------------------------------ structured output

def test_json_schema_mode(server, key):
    server.push(chat(json.dumps(GOOD_PLAN)))
    r = LLMClient(make_cfg(server, response_format="json_schema")).chat(MSGS, schema=PLAN_SCHEMA, role="planner")
    assert r.parsed_json == GOOD_PLAN and r.error is None and not r.repaired
    rf = server.chat_requests[0].body["response_format"]
    assert rf["type"] == "json_schema" and rf["json_schema"]["schema"] == PLAN_SCHEMA
    assert rf["json_schema"]["strict"] is True


def test_auto_mode_uses_json_schema_and_switches_to_json_object_when_the_server_refuses_it(server, key):
    server.push(status(400, "response_format json_schema is not supported by this model"),
                chat(json.dumps(GOOD_PLAN)), chat(json.dumps(GOOD_PLAN)))
    client = LLMClient(make_cfg(server))                     # response_format "auto" is the default
    assert client.config.response_format == "auto"
    r = client.chat(MSGS, schema=PLAN_SCHEMA, role="planner")
    assert r.parsed_json == GOOD_PLAN
    refused, retried = server.chat_requests
    assert refused.body["response_format"]["type"] == "json_schema"
    assert retried.body["response_format"] == {"type": "json_object"}
    assert "JSON Schema" in retried.body["messages"][0]["content"]
    assert [rec.ok for rec in client.ledger.records] == [False, True]     # the refusal is recorded
    assert len(client.notes) == 1 and "refused json_schema" in client.notes[0]   # and said
    client.chat(MSGS, schema=PLAN_SCHEMA, role="planner")                  # later calls go straight there
    assert server.chat_requests[2].body["response_format"] == {"type": "json_object"}


def test_explicit_json_schema_mode_never_switches(server, key):
    server.push(status(400, "response_format json_schema is not supported"))
    client = LLMClient(make_cfg(server, response_format="json_schema"))
    with pytest.raises(LLMCallError, match="HTTP 400"):
        client.chat(MSGS, schema=PLAN_SCHEMA, role="planner")
    assert len(server.chat_requests) == 1 and client.notes == []


def test_auto_mode_does_not_switch_on_other_400s(server, key):
    server.push(status(400, "maximum context length exceeded"))
    with pytest.raises(LLMCallError, match="context length"):
        LLMClient(make_cfg(server)).chat(MSGS, schema=PLAN_SCHEMA, role="planner")
    assert len(server.chat_requests) == 1


def test_json_object_mode_repairs_malformed_json_once(server, key):
    bad = '```json\n{"regions": [], "strategy": "x", "rewrites": [], "notes": "",}\n```'
    server.push(chat(bad, prompt_tokens=100, completion_tokens=10),
                chat("Sure:\n" + json.dumps(GOOD_PLAN), prompt_tokens=150, completion_tokens=30))
    client = LLMClient(make_cfg(server, response_format="json_object"))
    r = client.chat(MSGS, schema=PLAN_SCHEMA, role="planner")
    assert r.parsed_json == GOOD_PLAN and r.repaired and r.calls == 2 and r.attempts == 2
    assert r.usage.prompt_tokens == 250 and r.usage.completion_tokens == 40
    first, second = server.chat_requests
    assert first.body["response_format"] == {"type": "json_object"}
    assert "JSON Schema" in first.body["messages"][0]["content"]        # the schema travels in the prompt
    assert second.body["messages"][-2] == {"role": "assistant", "content": bad}
    assert "trailing comma" in second.body["messages"][-1]["content"]
    assert [rec.kind for rec in client.ledger.records] == ["chat", "repair"]


def test_schema_errors_after_repair_come_back_as_data(server, key):
    wrong = dict(GOOD_PLAN, regions=[dict(GOOD_PLAN["regions"][0], template="rows")])
    server.push(chat(json.dumps(wrong)), chat(json.dumps(wrong)))
    r = LLMClient(make_cfg(server, response_format="text")).chat(MSGS, schema=PLAN_SCHEMA, role="planner")
    assert r.parsed_json is None and r.calls == 2
    assert "$.regions[0].template" in r.error and "'rows'" in r.error
    assert "response_format" not in server.chat_requests[0].body
    assert "$.regions[0].template" in server.chat_requests[1].body["messages"][-1]["content"]


def test_semantic_check_feeds_the_repair_round(server, key):
    far = dict(GOOD_PLAN, regions=[dict(GOOD_PLAN["regions"][0], nodes=[5])])
    server.push(chat(json.dumps(far)), chat(json.dumps(GOOD_PLAN)))
    r = LLMClient(make_cfg(server)).chat(MSGS, schema=PLAN_SCHEMA, role="planner", check=plan_checker(1))
    assert r.parsed_json == GOOD_PLAN and r.repaired
    assert "node 5 does not exist" in server.chat_requests[1].body["messages"][-1]["content"]


# ------------------------------------------------------------------ budgets

def test_budget_on_calls(server, key):
    server.push(chat("one"), chat("two"))
    client = LLMClient(make_cfg(server), Ledger(max_calls=1))
    client.chat(MSGS)
    with pytest.raises(BudgetExceeded) as e:
        client.chat(MSGS)
    assert e.value.what == "calls" and len(server.chat_requests) == 1


def test_budget_on_tokens_is_checked_before_sending(server, key):
    client = LLMClient(make_cfg(server), Ledger(max_tokens=50))
    with pytest.raises(BudgetExceeded) as e:
        client.chat([{"role": "user", "content": "x" * 400}])     # ~100 estimated prompt tokens
    assert e.value.what == "tokens" and server.requests == []
    assert client.ledger.calls == 0


def test_budget_on_cost(server, key):
    server.push(chat("a", prompt_tokens=1000, completion_tokens=1000), chat("b"))
    cfg = make_cfg(server, max_output_tokens=1000)
    client = LLMClient(cfg, Ledger(max_cost=0.012))                # one call costs 0.010
    client.chat(MSGS)
    with pytest.raises(BudgetExceeded) as e:
        client.chat(MSGS)                                          # would reach ~0.018
    assert e.value.what.startswith("cost") and len(server.chat_requests) == 1
    assert server.chat_requests[0].body["max_completion_tokens"] == 1000


def test_ledger_reserves_calls_in_flight():
    ledger = Ledger(max_calls=1)
    rec = ledger.begin("worker", "m")
    with pytest.raises(BudgetExceeded):
        ledger.begin("worker", "m")                                # the first has not ended yet
    ledger.end(rec)
    assert ledger.calls == 1


# ------------------------------------------------------------------ transcripts

def test_record_then_replay_gives_identical_replies(server, key, tmp_path):
    server.push(chat("plain text", cached_tokens=None), chat(json.dumps(GOOD_PLAN), cached_tokens=30),
                status(400, "refused"))
    path = tmp_path / "run" / "transcript.jsonl"
    rec = RecordingClient(LLMClient(make_cfg(server)), path)
    replies = [rec.chat(MSGS, role="worker"), rec.chat(MSGS, schema=PLAN_SCHEMA, role="planner")]
    with pytest.raises(LLMCallError):
        rec.chat(MSGS, role="reflector")
    assert len(path.read_text().splitlines()) == 3

    replay = ReplayClient(path)
    again = [replay.chat(MSGS, role="worker"), replay.chat(MSGS, schema=PLAN_SCHEMA, role="planner")]
    assert [r.to_dict() for r in again] == [r.to_dict() for r in replies]
    assert again[0].usage.cached_tokens is None and again[1].usage.cached_tokens == 30
    with pytest.raises(LLMCallError) as e:
        replay.chat(MSGS, role="reflector")
    assert e.value.status == 400
    with pytest.raises(ReplayError, match="nothing left"):
        replay.chat(MSGS)
    assert replay.ledger.calls == 3 and replay.author == "replay:transcript.jsonl"


def test_replay_strict_mismatch_and_lenient(server, key, tmp_path):
    server.push(chat("one"))
    path = tmp_path / "t.jsonl"
    RecordingClient(LLMClient(make_cfg(server)), path).chat(MSGS, role="worker")
    other = [MSGS[0], {"role": "user", "content": "Say something else."}]
    with pytest.raises(ReplayError, match="message 1"):
        ReplayClient(path).chat(other, role="worker")
    with pytest.raises(ReplayError, match="'worker'"):
        ReplayClient(path).chat(MSGS, role="planner")
    assert ReplayClient(path, strict=False).chat(other, role="planner").text == "one"


def test_replay_errors_are_clear(tmp_path):
    with pytest.raises(ReplayError, match="not found"):
        ReplayClient(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"request": {}}\nnot json\n')
    with pytest.raises(ReplayError, match=r"bad.jsonl:1"):
        ReplayClient(bad)


def test_no_key_in_any_file_or_log(server, key, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    # a server that echoes the key back in an error must not get it into the transcript
    server.push(chat("ok"), status(400, f"invalid key {key}"), chat(json.dumps(GOOD_PLAN)))
    cfg = make_cfg(server, record_path=str(tmp_path / "transcripts" / "run.jsonl"))
    client = make_client(cfg)
    assert isinstance(client, RecordingClient)
    client.chat(MSGS)
    with pytest.raises(LLMCallError) as e:
        client.chat(MSGS)
    assert key not in str(e.value)
    client.chat(MSGS, schema=PLAN_SCHEMA, role="planner")
    (tmp_path / "ledger.json").write_text(json.dumps(client.ledger.summary()))
    (tmp_path / "config.json").write_text(json.dumps(cfg.to_dict()))
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) == 3
    for p in files:
        assert key not in p.read_text(errors="replace"), p
    assert key not in caplog.text
    # ... while every request did carry it
    assert all(header(r, "authorization") == f"Bearer {key}" for r in server.chat_requests)


def test_make_client_replay_provider(server, key, tmp_path):
    server.push(chat("recorded"))
    path = tmp_path / "t.jsonl"
    make_client(make_cfg(server, record_path=str(path))).chat(MSGS)
    client = make_client(LLMConfig(provider="replay", replay_path=str(path), max_calls=5))
    assert isinstance(client, ReplayClient) and client.ledger.max_calls == 5
    assert client.chat(MSGS).text == "recorded"


# ------------------------------------------------------------------ preflight

def test_preflight_ok(server, key):
    info = preflight(make_cfg(server))
    assert info["checked"] == "models"
    assert header(server.requests[0], "authorization") == f"Bearer {key}"


def test_preflight_missing_env_var(server, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(PreflightError, match=f"environment variable {KEY_ENV} is not set"):
        make_cfg(server).preflight()
    assert server.requests == []


def test_preflight_unreachable_server(key):
    cfg = LLMConfig(base_url=f"http://127.0.0.1:{free_port()}/v1", model="m", api_key_env=KEY_ENV)
    with pytest.raises(PreflightError, match="cannot reach http://127.0.0.1"):
        preflight(cfg)


def test_preflight_rejected_key(key):
    with ScriptedServer(models_status=401) as srv:
        with pytest.raises(PreflightError, match="rejected the credentials") as e:
            preflight(make_cfg(srv))
    assert key not in str(e.value)


def test_preflight_unknown_model_probes_with_a_chat(server, key):
    server.push(status(404, "model not found"))
    with pytest.raises(PreflightError, match="'other-model'.*not served"):
        preflight(make_cfg(server, model="other-model"))
    assert server.chat_requests[0].body["max_completion_tokens"] == 1
    with ScriptedServer(models_status=404) as srv:      # no /models route: the chat probe decides
        srv.push(chat("p"))
        assert preflight(make_cfg(srv))["checked"] == "chat"


def test_preflight_replay(tmp_path):
    with pytest.raises(PreflightError, match="not found"):
        preflight(LLMConfig(provider="replay", replay_path=str(tmp_path / "none.jsonl")))


# ------------------------------------------------------------------ parsing

KERNEL = "kernel k(x: f32[N]) -> (y: f32[N]) {\n  fn f(t) = relu(t)  # {not a brace}\n  xs = load(x, tile=[N])\n" \
         "  ys = map(xs, fn=f)\n  store(y, ys)\n}\n"


def test_extract_kernel_forms():
    assert extract_kernel(f"Here:\n```asp\n{KERNEL}```\nDone.") == KERNEL
    assert extract_kernel(f"```\n{KERNEL}```") == KERNEL
    assert extract_kernel(f"The kernel follows.\n{KERNEL}\nIt streams rows {{fast}}.") == KERNEL
    commented = "# relu, one pass\n" + KERNEL
    assert extract_kernel("Answer:\n" + commented + "That's it.") == commented
    # a sketch then the final kernel: the last asp block wins
    assert extract_kernel(f"```asp\nxs = load(x)\n```\nfinal:\n```asp\n{KERNEL}```") == KERNEL
    # a truncated reply (no closing fence) still yields what is there
    assert extract_kernel(f"```asp\n{KERNEL}") == KERNEL


def test_extract_kernel_errors():
    for text in ("", "I cannot write this kernel.", "```python\nprint(1)\n```", "```asp\nxs = load(x)\n```"):
        with pytest.raises(ReplyParseError):
            extract_kernel(text)


def test_extract_json_forms():
    assert extract_json('{"a": 1}') == {"a": 1}
    assert extract_json('Plan:\n```json\n{"a": [1, 2]}\n```\nok') == {"a": [1, 2]}
    assert extract_json('I think {"a": {"b": null}} works; use {it}.') == {"a": {"b": None}}
    assert extract_json('```\n{"a": true}\n```') == {"a": True}


@pytest.mark.parametrize("text, words", [
    ('{"a": 1, "b": [1, 2,],}', "trailing comma"),
    ("{'a': 1}", "double quotes"),
    ('{"a": NaN}', "NaN"),
    ("no json here", "no JSON"),
    ('{"a": 1', "invalid JSON"),
    ("", "empty"),
])
def test_extract_json_errors_are_short_feedback(text, words):
    with pytest.raises(ReplyParseError) as e:
        extract_json(text)
    assert words in str(e.value) and len(str(e.value)) < 200


# ------------------------------------------------------------------ schemas

def test_validator_subset():
    assert validate(GOOD_PLAN, PLAN_SCHEMA) == []
    errs = validate({"regions": [{"template": "row", "nodes": ["0"], "params": {}, "why": 1}], "extra": 1},
                    PLAN_SCHEMA)
    text = "\n".join(errs)
    assert "$.regions[0].nodes[0]: expected integer" in text and "unexpected key 'extra'" in text
    assert "missing required keys 'strategy', 'rewrites', 'notes'" in text
    assert validate({"accept": True, "plan": None, "note": ""}, REFLECTION_SCHEMA) == []
    assert validate({"accept": "yes", "plan": None, "note": ""}, REFLECTION_SCHEMA)
    errs = validate({"accept": True, "plan": {"regions": [], "strategy": "", "rewrites": [], "notes": ""},
                     "note": ""}, REFLECTION_SCHEMA)
    assert errs == ["$.plan.regions: needs at least 1 item(s), got 0"]
    with pytest.raises(SchemaError):
        validate(1, {"type": "integer", "multipleOf": 2})


def test_normalize_plan_is_author_compatible():
    from agentforge.author import Plan

    plan = normalize_plan(GOOD_PLAN)
    assert plan["regions"][0]["params"] == {"rows": 4, "par": 8, "par_mem": 4}
    p = Plan.from_dict(plan)
    assert p.regions[0].template == "row" and p.regions[0].nodes == [0]


def test_failed_repair_round_returns_the_first_reply(server, key):
    server.push(chat("not json at all", prompt_tokens=70), status(400, "no more"))
    r = LLMClient(make_cfg(server)).chat(MSGS, schema=PLAN_SCHEMA, role="planner")
    assert r.parsed_json is None and r.usage.prompt_tokens == 70
    assert "no JSON" in r.error and "repair round failed" in r.error
