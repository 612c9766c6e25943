"""Specification tests for the plan cache (agentforge.store.plan_cache) and its SQLite layer
(agentforge.store.db): keyed by the size-free signature key, verified plans only, the fastest
kept per key, adaptation by validation, hit/miss and savings accounting, persistence across
connections and processes, versioned migrations, and clear errors for files it cannot use."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

import asp_lang
from agentforge import author
from agentforge.baseline import capture_at
from agentforge.capture import signature
from agentforge.errors import AgentforgeError
from agentforge.store.db import (CorruptDatabaseError, Database, Migration, Schema, SchemaTooNewError,
                                 UnverifiedError)
from agentforge.store.plan_cache import PLAN_CACHE_SCHEMA, CachedPlan, PlanCache, cache_clear, cache_stats
from agentforge.tasks import load_task
from agentforge.verify import Evaluation

ROOT = Path(__file__).resolve().parents[2]
SUITE = ROOT / "evals" / "suite"
SMALL = {"BATCH": 8, "DIM": 64}
LARGE = {"BATCH": 16, "DIM": 128}


@pytest.fixture(scope="module")
def softmax():
    task = load_task(SUITE / "softmax.py")
    small, large = capture_at(task, SMALL, meta=True), capture_at(task, LARGE, meta=True)
    return {"small": small, "large": large, "sig_small": signature(small), "sig_large": signature(large)}


@pytest.fixture(scope="module")
def log_softmax_sig():
    return signature(capture_at(load_task(SUITE / "log_softmax.py"), SMALL, meta=True))


@pytest.fixture
def cache(tmp_path):
    with PlanCache(tmp_path / "memory.sqlite") as c:
        yield c


def row_plan(params=None, notes=""):
    """The plan the offline author builds for softmax: one fused row region over node 0."""
    return author.Plan([author.Region("row", [0], dict(params or {"rows": 4, "par": 64, "par_mem": 4}))],
                       notes=notes)


def ok(speedup=1.5, task="softmax"):
    return {"verified": True, "speedup": speedup, "task": task, "machine": "sn40l"}


# ------------------------------------------------------------------ keys


def test_key_ignores_sizes_and_separates_tasks(softmax, log_softmax_sig):
    small, large = softmax["sig_small"], softmax["sig_large"]
    assert small.key() == large.key()                    # same computation, other sizes
    assert small.sized_key() != large.sized_key()
    assert small.key() != log_softmax_sig.key()          # another computation


def test_a_plan_stored_at_one_size_is_found_at_another(cache, softmax, log_softmax_sig):
    cache.store(softmax["sig_small"], row_plan(), ok())
    hit = cache.lookup(softmax["sig_large"])
    assert isinstance(hit, CachedPlan)
    assert hit.signature_key == softmax["sig_large"].key()
    assert hit.to_plan().regions[0].nodes == [0]
    assert cache.lookup(log_softmax_sig) is None


# ------------------------------------------------------------------ hits and misses


def test_lookup_counts_hits_and_misses(cache, softmax):
    assert cache.lookup(softmax["sig_small"]) is None
    assert cache.stats()["misses"] == 1 and cache.stats()["hits"] == 0
    cache.store(softmax["sig_small"], row_plan(), ok())
    first = cache.lookup(softmax["sig_small"])
    second = cache.lookup(softmax["sig_large"])
    assert first.hits == 1 and second.hits == 2 and second.last_hit_at is not None
    stats = cache.stats()
    assert (stats["hits"], stats["misses"]) == (2, 1)
    assert stats["hit_rate"] == pytest.approx(2 / 3)
    assert stats["entries"] == 1


def test_peek_counts_nothing(cache, softmax):
    cache.store(softmax["sig_small"], row_plan(), ok())
    assert cache.peek(softmax["sig_small"]) is not None
    assert cache.peek("no-such-key") is None
    assert (cache.stats()["hits"], cache.stats()["misses"]) == (0, 0)


def test_stats_of_an_empty_cache(cache):
    stats = cache.stats()
    for name in ("entries", "hits", "misses", "planner_calls_saved", "tokens_saved"):
        assert stats[name] == 0
    assert stats["hit_rate"] == 0.0


# ------------------------------------------------------------------ verified plans only


@pytest.mark.parametrize("evaluation", [
    {"verified": False, "speedup": 9.0},
    {"speedup": 9.0},                                     # no flag at all
    Evaluation(task="softmax", candidate="plan", verified=False, reason="mismatch", speedup=9.0),
])
def test_unverified_plans_are_refused(cache, softmax, evaluation):
    with pytest.raises(UnverifiedError) as err:
        cache.store(softmax["sig_small"], row_plan(), evaluation)
    assert isinstance(err.value, AgentforgeError) and "unverified" in str(err.value)
    assert cache.stats()["entries"] == 0


def test_a_verifier_report_is_accepted(cache, softmax):
    ev = Evaluation(task="softmax", candidate="plan", verified=True, reason=None, speedup=2.5, machine="sn40l")
    entry = cache.store(softmax["sig_small"], row_plan(), ev)
    assert entry.speedup == 2.5 and entry.task == "softmax"
    assert entry.evaluation["machine"] == "sn40l" and "checks" not in entry.evaluation


def test_keeps_the_fastest_plan_and_counts_verifications(cache, softmax):
    sig = softmax["sig_small"]
    cache.store(sig, row_plan({"rows": 4}, "A"), ok(1.5))
    entry = cache.store(sig, row_plan({"rows": 1}, "B"), ok(1.2))   # slower: not kept
    assert entry.plan["notes"] == "A" and entry.verifications == 2
    entry = cache.store(sig, row_plan({"rows": 8}, "C"), ok(2.0))   # faster: replaces A
    assert entry.plan["notes"] == "C" and entry.speedup == 2.0 and entry.verifications == 3
    assert cache.stats()["entries"] == 1 and cache.stats()["verifications"] == 3
    assert entry.priors() == {"row": {"rows": 8}}


def test_plans_are_kept_per_size_class_and_the_tasks_own_class_is_preferred(cache, softmax):
    small, large = softmax["sig_small"], softmax["sig_large"]
    assert small.key() == large.key() and small.class_key() != large.class_key()
    cache.store(small, row_plan({"rows": 4}, "small"), ok(1.5))
    cache.store(large, row_plan({"rows": 16}, "large"), ok(1.2))   # slower, but its own size regime
    assert cache.stats()["entries"] == 2
    hit = cache.lookup(large)
    assert hit.plan["notes"] == "large" and hit.match == "class"
    assert cache.lookup(small).plan["notes"] == "small"
    assert cache.stats()["size_class_hits"] == 2 and cache.stats()["class_hits"] == 0   # class_hits: structural
    # a key-only lookup (no class) takes the fastest of the key's classes
    assert cache.peek(small.key()).plan["notes"] == "small" and cache.peek(small.key()).match == "key"


def test_a_task_in_a_class_never_seen_gets_the_fastest_plan_of_its_key(cache, softmax):
    cache.store(softmax["sig_small"], row_plan({"rows": 4}, "small"), ok(1.5))
    hit = cache.lookup(softmax["sig_large"])
    assert hit.plan["notes"] == "small" and hit.match == "key"
    assert cache.stats()["hits"] == 1 and cache.stats()["size_class_hits"] == 0


# ------------------------------------------------------------------ adaptation


def test_adapt_fits_a_cached_plan_to_other_sizes(cache, softmax):
    cache.store(softmax["sig_small"], row_plan({"rows": 4, "par": 64, "bogus": 3, "par_mem": 0}), ok())
    cached = cache.lookup(softmax["sig_large"])
    plan = cache.adapt(cached, softmax["large"], asp_lang.load_machine("sn40l"))
    assert isinstance(plan, author.Plan)
    assert [(r.template, r.nodes) for r in plan.regions] == [("row", [0])]
    # params the template does not know, or that are not positive integers, are dropped
    assert plan.regions[0].params == {"rows": 4, "par": 64}
    assert cache.stats()["adapt_failures"] == 0


def test_adapt_drops_tiles_larger_than_the_new_sizes(cache, softmax):
    cache.store(softmax["sig_large"], row_plan({"rows": 16, "par": 64}), ok())
    plan = cache.adapt(cache.lookup(softmax["sig_small"]), softmax["small"])   # only 8 rows now
    assert plan.regions[0].params == {"par": 64}


@pytest.mark.parametrize("regions", [
    [author.Region("row", [1])],                                  # the graph has one semantic node
    [author.Region("row", [-1])],
    [author.Region("row", [0]), author.Region("single", [0])],    # a node in two regions
    [author.Region("row", [])],
    [author.Region("matmul", [0])],                               # no mm/addmm in a matmul region
])
def test_adapt_rejects_plans_that_do_not_fit(cache, softmax, regions):
    cache.store(softmax["sig_small"], author.Plan(regions), ok())
    assert cache.adapt(cache.lookup(softmax["sig_small"]), softmax["large"]) is None
    assert cache.stats()["adapt_failures"] == 1


def test_adapt_rejects_a_graph_of_another_key(cache, softmax):
    log_sm = capture_at(load_task(SUITE / "log_softmax.py"), SMALL, meta=True)
    cache.store(softmax["sig_small"], row_plan(), ok())
    cached = cache.lookup(softmax["sig_small"])
    assert cache.adapt(cached, log_sm) is None
    assert cache.adapt(cached, log_sm, check_key=False) is not None   # structurally it would fit


# ------------------------------------------------------------------ savings, clear


def test_record_saved_accumulates_planner_calls_and_tokens(cache):
    cache.record_saved(1, 1200)
    cache.record_saved(planner_calls=2, tokens=300)
    stats = cache.stats()
    assert stats["planner_calls_saved"] == 3 and stats["tokens_saved"] == 1500
    with pytest.raises(ValueError):
        cache.record_saved(-1, 0)


def test_clear_removes_entries_and_resets_counters(cache, softmax, log_softmax_sig):
    cache.store(softmax["sig_small"], row_plan(), ok())
    cache.store(log_softmax_sig, row_plan(), ok(task="log_softmax"))
    cache.lookup(softmax["sig_small"])
    cache.record_saved(1, 10)
    assert cache.clear() == 2
    stats = cache.stats()
    assert stats["entries"] == 0 and stats["hits"] == 0 and stats["tokens_saved"] == 0
    assert cache.lookup(softmax["sig_small"]) is None


def test_cli_helpers(tmp_path, softmax):
    path = tmp_path / "cli.sqlite"
    assert cache_stats(path)["entries"] == 0 and cache_clear(path) == 0
    assert not path.exists()                                # reading stats creates nothing
    with PlanCache(path) as c:
        c.store(softmax["sig_small"], row_plan(), ok())
        c.lookup(softmax["sig_small"])
    stats = cache_stats(path)
    assert stats["entries"] == 1 and stats["hits"] == 1 and stats["hit_rate"] == 1.0
    assert cache_clear(path) == 1 and cache_stats(path)["entries"] == 0


# ------------------------------------------------------------------ persistence and concurrency


def test_everything_survives_a_reopen(tmp_path, softmax):
    path = tmp_path / "memory.sqlite"
    with PlanCache(path) as c:
        c.store(softmax["sig_small"], row_plan({"rows": 4}, "kept"), ok(1.7))
        c.lookup(softmax["sig_small"])
        c.lookup("missing")
        c.record_saved(1, 500)
    with PlanCache(path) as again:
        entry = again.lookup(softmax["sig_large"])
        assert entry.plan["notes"] == "kept" and entry.speedup == 1.7 and entry.hits == 2
        stats = again.stats()
        assert (stats["hits"], stats["misses"], stats["tokens_saved"]) == (2, 1, 500)


def test_wal_and_foreign_keys_are_on(cache):
    assert cache.db.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert cache.db.conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert cache.db.conn.execute("PRAGMA busy_timeout").fetchone()[0] > 0


def test_readers_see_a_writer_and_concurrent_writers_lose_nothing(tmp_path, softmax):
    path = tmp_path / "shared.sqlite"
    writer, reader = PlanCache(path), PlanCache(path)
    writer.store(softmax["sig_small"], row_plan(), ok())
    assert reader.peek(softmax["sig_small"]) is not None

    def worker():
        with PlanCache(path) as own:
            for i in range(20):
                own.lookup(softmax["sig_small"] if i % 2 else "missing")

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stats = reader.stats()
    assert stats["hits"] + stats["misses"] == 80 and stats["hits"] == 40
    writer.close()
    reader.close()


# ------------------------------------------------------------------ schema versions


def test_a_fresh_database_records_every_migration(cache):
    rows = cache.db.query("SELECT version, description FROM schema_version WHERE component = 'plan_cache' "
                          "ORDER BY version")
    assert [r["version"] for r in rows] == list(range(1, PLAN_CACHE_SCHEMA.version + 1))
    assert cache.db.version == PLAN_CACHE_SCHEMA.version


def test_an_older_database_is_migrated_in_place(tmp_path, softmax):
    path = tmp_path / "old.sqlite"
    with Database(path, PLAN_CACHE_SCHEMA.upto(1)) as old:       # what the first release wrote
        assert old.version == 1
        with old.transaction() as c:
            c.execute("INSERT INTO plan_cache_entries (signature_key, plan_json, speedup, verifications, task,"
                      " created_at, updated_at) VALUES (?, ?, 1.3, 2, 'softmax', 0, 0)",
                      (softmax["sig_small"].key(), '{"regions": [{"template": "row", "nodes": [0]}]}'))
            c.execute("UPDATE plan_cache_counters SET value = 5 WHERE name = 'misses'")
    with PlanCache(path) as c:
        assert c.db.version == PLAN_CACHE_SCHEMA.version
        entry = c.lookup(softmax["sig_large"])
        assert entry.speedup == 1.3 and entry.verifications == 2 and entry.hits == 1
        assert c.stats()["misses"] == 5 and c.stats()["adapt_failures"] == 0


def test_a_newer_database_is_refused_untouched(tmp_path):
    path = tmp_path / "new.sqlite"
    PlanCache(path).close()
    con = sqlite3.connect(path)
    con.execute("INSERT INTO schema_version VALUES ('plan_cache', 99, 'from the future', 0)")
    con.commit()
    con.close()
    before = path.read_bytes()
    with pytest.raises(SchemaTooNewError) as err:
        PlanCache(path)
    assert isinstance(err.value, AgentforgeError)
    assert "version 99" in str(err.value) and str(path) in str(err.value)
    assert path.read_bytes() == before


def test_a_corrupt_file_is_refused(tmp_path):
    path = tmp_path / "garbage.sqlite"
    path.write_bytes(b"this is not a SQLite database\n" * 200)
    with pytest.raises(CorruptDatabaseError) as err:
        PlanCache(path)
    assert isinstance(err.value, AgentforgeError) and str(path) in str(err.value)


def test_migrations_apply_in_order_once_and_roll_back_on_failure(tmp_path):
    log = []

    def step3(conn):
        log.append(3)
        conn.execute("INSERT INTO t (v) VALUES ('three')")

    base = (Migration(1, "table", ("CREATE TABLE t (v TEXT)",)),
            Migration(2, "row", ("INSERT INTO t (v) VALUES ('two')",)))
    path = tmp_path / "m.sqlite"
    Database(path, Schema("demo", base)).close()
    with Database(path, Schema("demo", base + (Migration(3, "callable", step3),))) as db:
        assert db.version == 3 and [r["v"] for r in db.query("SELECT v FROM t")] == ["two", "three"]
    Database(path, Schema("demo", base + (Migration(3, "callable", step3),))).close()
    assert log == [3]                                           # never applied twice

    def broken(conn):
        conn.execute("INSERT INTO t (v) VALUES ('four')")
        raise RuntimeError("migration bug")

    schema = Schema("demo", base + (Migration(3, "callable", step3), Migration(4, "broken", broken)))
    with pytest.raises(RuntimeError):
        Database(path, schema)
    with Database(path, schema.upto(3)) as db:
        assert db.version == 3 and len(db.query("SELECT v FROM t")) == 2
    with pytest.raises(ValueError):
        Schema("demo", (Migration(2, "gap", ()),))


def test_a_failed_transaction_leaves_nothing(cache, softmax):
    with pytest.raises(RuntimeError):
        with cache.db.transaction() as c:
            c.execute("UPDATE plan_cache_counters SET value = 7 WHERE name = 'hits'")
            raise RuntimeError("boom")
    assert cache.stats()["hits"] == 0


def test_every_author_template_has_its_tunable_parameters_listed():
    """A template the cache cannot adapt would crash every cache hit of its tasks."""
    from agentforge.author import GRIDS, TEMPLATES
    from agentforge.store.plan_cache import PARAM_KEYS

    assert set(PARAM_KEYS) == set(TEMPLATES)
    for template, grid in GRIDS.items():
        assert set(grid) <= set(PARAM_KEYS[template]), template
