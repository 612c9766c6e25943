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
from agentforge.capture import capture_at, signature
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


# ------------------------------------------------------------------ the structural tier
#
# Plans transfer at the level of the fused regions' structure: a cache filled by the bundled
# suite (linear_bias, linear_bias_gelu, matmul_relu, relu, ...) serves KernelBench level-2
# problems it has never seen (evals/kernelbench_l2), whose op sequences differ.

import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from types import SimpleNamespace  # noqa: E402

from agentforge.agents.offline import OfflineReflector, OfflineWorker  # noqa: E402
from agentforge.agents.roles import Usage  # noqa: E402
from agentforge.capture import op_kind  # noqa: E402
from agentforge.llm.ledger import Ledger  # noqa: E402
from agentforge.loop import offline_roles, solve, task_context  # noqa: E402
from agentforge.review.data import TaskView  # noqa: E402
from agentforge.store.plan_cache import rebind, structural_form, structure_of  # noqa: E402
from agentforge.verify import VerifyConfig, evaluate  # noqa: E402

L2 = ROOT / "evals" / "kernelbench_l2"
MACHINE = asp_lang.load_machine("sn40l")
MM_PARAMS = {"tm": 256, "tn": 256, "tk": 128, "par": 1024, "hold": 1, "par_buf": 16, "par_mem": 8, "par_epi": 16}


def captured(path: Path) -> SimpleNamespace:
    """A task at its own sizes and its first two small size sets, with both keys."""
    task = load_task(path)
    own = capture_at(task, meta=True)
    small = [capture_at(task, s, meta=True) for s in task.resolved_size_sets()[:2]]
    return SimpleNamespace(task=task, own=own, small=small, sig=signature(own), structure=structure_of(own, small))


@pytest.fixture(scope="module")
def gemms():
    return {"gelu": captured(SUITE / "linear_bias_gelu.py"), "bias": captured(SUITE / "linear_bias.py"),
            "relu": captured(SUITE / "matmul_relu.py"), "leaky": captured(L2 / "gemm_multiply_leakyrelu.py")}


def fused_plan(c: SimpleNamespace, notes: str = "") -> author.Plan:
    """Each region of the task's partition fused whole (what the offline author keeps for these tasks)."""
    return author.Plan([author.Region(t, list(nodes), dict(MM_PARAMS) if t == "matmul" else {})
                        for nodes, t in zip(c.structure.partition, c.structure.templates)], notes=notes)


def store_verified(cache, c, plan, speedup=1.5, **extra):
    return cache.store(c.sig, plan, {**ok(speedup, c.task.name), **extra}, graph=c.own, structure=c.structure)


def test_the_structural_key_is_the_shape_of_the_fused_regions(gemms):
    gelu, bias, relu, leaky = gemms["gelu"], gemms["bias"], gemms["relu"], gemms["leaky"]
    assert len({gelu.sig.key(), bias.sig.key(), leaky.sig.key()}) == 3       # the exact tier tells them apart
    # ... the structural tier does not: a transposed weight, the matmul, then one elementwise
    # slot (the bias, the GELU, the multiply and the LeakyReLU alike) reading a broadcast row
    assert gelu.structure.key == bias.structure.key == leaky.structure.key
    assert leaky.structure.regions == [{"template": "matmul", "slots": ["transpose_b", "mm", "ew[row]"],
                                        "rank": 2, "dtype": "fp32"}]
    assert leaky.structure.bound == "compute"
    assert relu.structure.regions[0]["slots"] == ["mm", "ew"]                # no transposed weight, no bias
    assert relu.structure.key != gelu.structure.key
    softmax = captured(SUITE / "softmax.py")
    assert softmax.structure.regions[0]["template"] == "row" and softmax.structure.key != gelu.structure.key


def test_a_structural_hit_serves_an_unseen_epilogue_chain(cache, gemms):
    gelu, leaky = gemms["gelu"], gemms["leaky"]
    store_verified(cache, gelu, fused_plan(gelu), 3.0)
    assert cache.stats()["structural_entries"] == 1
    served = cache.serve(leaky.sig, leaky.own, MACHINE, leaky.structure)
    assert served is not None and served.tier == "structural" and served.cached.task == "linear_bias_gelu"
    (region,) = served.plan.regions
    sem = author.semantic_nodes(leaky.own)
    # re-bound: this graph's node indices, the epilogue slot holding this task's own ops
    assert region.template == "matmul"
    assert [op_kind(sem[i].target) for i in region.nodes] == ["permute", "addmm", "mul", "leaky_relu"]
    assert set(region.params) == set(author.MM_GRID) and served.search_evaluations > 0   # re-tuned: other sizes
    author.realize(served.plan, leaky.own, MACHINE)
    assert "plan cache: structural hit" in served.note()
    stats = cache.stats()
    assert (stats["hits"], stats["class_hits"], stats["exact_hits"], stats["misses"]) == (1, 1, 0, 0)
    # the re-bound plan is a correct plan of the new task
    ev = evaluate(leaky.task, {"kind": "plan", "plan": served.plan.to_dict()}, VerifyConfig(machine="sn40l"))
    assert ev.verified, ev.reason


def test_a_served_plan_is_realised_once_and_its_evaluation_reuses_the_chain(cache, gemms):
    # the adaptation checks that the plan realises by binding its solution; the loop's evaluation
    # binds a solution of the same plan at the same graph and gets that chain, not a second build
    from agentforge import solution as sol

    leaky = gemms["leaky"]
    store_verified(cache, leaky, fused_plan(leaky, notes="realised once"), 3.0)   # notes: a plan no test built
    before = sol.BUILDS["plan"]
    served = cache.serve(leaky.sig, leaky.own, MACHINE, leaky.structure)
    assert served is not None and served.tier == "exact" and "realised once" in served.plan.notes
    assert sol.BUILDS["plan"] - before >= 1
    built = sol.BUILDS["plan"]
    chain = sol.plan_solution(served.plan.to_dict(), MACHINE).chain(leaky.own)
    assert sol.BUILDS["plan"] == built and chain.kernels


def test_a_task_of_another_structure_misses(cache, gemms):
    store_verified(cache, gemms["gelu"], fused_plan(gemms["gelu"]))
    relu = gemms["relu"]
    assert cache.serve(relu.sig, relu.own, MACHINE, relu.structure) is None
    assert cache.peek(relu.sig, relu.structure) is None
    stats = cache.stats()
    assert (stats["hits"], stats["misses"]) == (0, 1)


def test_the_exact_tier_is_preferred_when_it_exists(cache, gemms):
    gelu, bias = gemms["gelu"], gemms["bias"]
    store_verified(cache, gelu, fused_plan(gelu, "gelu's own"), 1.1)
    store_verified(cache, bias, fused_plan(bias, "linear_bias"), 9.0)        # faster, same structure
    served = cache.serve(gelu.sig, gelu.own, MACHINE, gelu.structure)
    assert served.tier == "exact" and served.cached.task == "linear_bias_gelu"
    assert served.plan.notes.startswith("gelu's own")
    # the same shapes on the same machine: nothing to re-tune
    assert served.kept_regions == 1 and served.search_evaluations == 0
    assert served.plan.regions[0].params == MM_PARAMS
    stats = cache.stats()
    assert (stats["exact_hits"], stats["class_hits"], stats["size_class_hits"]) == (1, 0, 1)
    # once the exact entry is demoted, the structural tier serves the task
    cache.false_hit(served.cached)
    again = cache.serve(gelu.sig, gelu.own, MACHINE, gelu.structure)
    assert again.tier == "structural" and again.cached.task == "linear_bias"


def test_a_plan_not_made_of_the_partitions_regions_stays_exact_only(cache, gemms):
    gelu = gemms["gelu"]
    (nodes,) = gelu.structure.partition
    odd = author.Plan([author.Region("matmul", nodes[:2], dict(MM_PARAMS)), author.Region("single", nodes[2:])])
    assert structural_form(odd, gelu.structure) is None
    store_verified(cache, gelu, odd)
    stats = cache.stats()
    assert stats["entries"] == 1 and stats["structural_entries"] == 0


def test_a_split_region_is_rebound_op_by_op(gemms):
    gelu, leaky = gemms["gelu"], gemms["leaky"]
    (nodes,) = gelu.structure.partition
    split = author.Plan([author.Region("single", [i], {"compute": 16, "memory": 2}) for i in nodes])
    form = structural_form(split, gelu.structure)
    assert form is not None and len(form[0]["split"]) == 3
    plan, dims = rebind(form, leaky.structure)
    # four ops here, three there: each op its own region, parameters left to the re-tuning
    assert [(r["template"], r["nodes"], r["params"]) for r in plan["regions"]] == \
        [("single", [i], {}) for i in leaky.structure.partition[0]]
    plan, dims = rebind(form, gelu.structure)                                # same count: parameters kept
    assert [r["params"] for r in plan["regions"]] == [{"compute": 16, "memory": 2}] * 3 and all(dims)


def test_a_v3_database_keeps_its_size_class_hits_under_their_new_name(tmp_path):
    path = tmp_path / "v3.sqlite"
    with Database(path, PLAN_CACHE_SCHEMA.upto(3)) as old:
        with old.transaction() as c:
            c.execute("UPDATE plan_cache_counters SET value = 5 WHERE name = 'class_hits'")
    with PlanCache(path) as c:
        stats = c.stats()
        assert (stats["size_class_hits"], stats["class_hits"], stats["false_hits"]) == (5, 0, 0)
        assert stats["structural_entries"] == 0 and stats["schema_version"] == 4


# ------------------------------------------------------------------ through the loop


@pytest.fixture(scope="module")
def elementwise():
    """relu, sigmoid and tanh: one row region each, the same structure, three computations."""
    return {name: captured(SUITE / f"{name}.py") for name in ("relu", "sigmoid", "tanh")}


def row_plan_of(c):
    return author.Plan([author.Region("row", list(c.structure.partition[0]), {"rows": 1, "par": 16, "par_mem": 4})])


class _LLMLikePlanner:
    """The offline planner's plan, billed like an LLM planner's, with a client and its ledger."""

    def __init__(self):
        self.inner = offline_roles()[0]
        self.usage = Usage()
        self.client = SimpleNamespace(ledger=Ledger())
        self.calls = 0

    def plan(self, ctx, demos):
        self.calls += 1
        self.usage.add(Usage(calls=1, prompt_tokens=900, completion_tokens=100, cost=0.01))
        return self.inner.plan(ctx, demos)


def test_a_structural_hit_skips_the_planner_and_the_ledger_records_what_it_saved(cache, elementwise):
    relu, sigmoid = elementwise["relu"], elementwise["sigmoid"]
    store_verified(cache, relu, row_plan_of(relu), planner_tokens=1000, planner_cost=0.01,
                   planner_search_evaluations=60)
    planner = _LLMLikePlanner()
    ctx = task_context(sigmoid.task)
    res = solve(sigmoid.task, planner, [OfflineWorker()], OfflineReflector(), ctx=ctx, plan_cache=cache)
    assert res.verified and res.plan_source == "cache" and planner.calls == 0
    assert res.plan_cache_tier == "structural" and res.plan_cache_hit and not res.plan_cache_false_hit
    assert res.plan_cache["task"] == "relu"
    assert planner.client.ledger.summary()["saved"] == {"calls": 1, "tokens": 1000, "cost": 0.01}
    assert planner.client.ledger.calls == 0                                  # a saving is not a call
    stats = cache.stats()
    assert (stats["planner_calls_saved"], stats["tokens_saved"]) == (1, 1000)
    assert stats["search_evaluations_saved"] == 60 - res.plan_cache["search_evaluations"] > 0
    # the task's own verified plan entered both tiers, carrying what the plan cost to make
    mine = cache.peek(sigmoid.sig)
    assert mine.tier == "exact" and mine.evaluation["planner_tokens"] == 1000
    assert TaskView(0, "sigmoid", "verified", notes=res.notes, plan_cache_hit=True).plan_cache_tier == "structural"


def test_the_offline_planner_is_told_the_search_it_was_spared(cache, elementwise):
    relu, tanh = elementwise["relu"], elementwise["tanh"]
    store_verified(cache, relu, row_plan_of(relu), planner_search_evaluations=60)
    planner, workers, reflector = offline_roles()
    res = solve(tanh.task, planner, workers, reflector, plan_cache=cache)
    assert res.verified and res.plan_cache_tier == "structural"
    assert planner.search_evaluations == 0 and planner.search_evaluations_saved == 60 - \
        res.plan_cache["search_evaluations"]


def test_a_false_hit_falls_back_to_the_planner_is_demoted_and_costs_the_task_nothing(cache, elementwise):
    relu, sigmoid, tanh = elementwise["relu"], elementwise["sigmoid"], elementwise["tanh"]
    store_verified(cache, relu, row_plan_of(relu))
    ctx = task_context(sigmoid.task)
    rejected = []

    def verifier(candidate):
        # the real verifier, except that here the cached plan fails (as a plan whose fusion is
        # wrong for this task would): the cache must not cost the task its result
        if "plan cache" in (candidate.get("plan") or {}).get("notes", ""):
            rejected.append(candidate)
            return Evaluation(task="sigmoid", candidate="plan", verified=False, reason="output mismatch",
                              reason_code="mismatch", machine="sn40l")
        return evaluate(sigmoid.task, candidate, VerifyConfig(machine="sn40l"), baseline_seconds=ctx.baseline_seconds)

    planner = _LLMLikePlanner()
    from agentforge.loop import SolveConfig

    # one attempt: the false hit's round is not charged to the task, so the planner's plan still runs
    res = solve(sigmoid.task, planner, [OfflineWorker()], OfflineReflector(), ctx=ctx, plan_cache=cache,
                evaluate_fn=verifier, cfg=SolveConfig(max_attempts=1))
    assert len(rejected) == 1 and planner.calls == 1
    assert res.verified and res.plan_source == "planner"
    assert res.plan_cache_false_hit and res.plan_cache_tier == "structural" and not res.plan_cache_hit
    assert any(n.startswith("plan cache: false hit") for n in res.notes)
    assert planner.client.ledger.summary()["saved"]["calls"] == 0           # nothing was saved
    stats = cache.stats()
    assert (stats["hits"], stats["class_hits"], stats["false_hits"], stats["planner_calls_saved"]) == (1, 1, 1, 0)
    assert stats["demoted"] == 1
    (demoted,) = [e for e in cache.structural_entries() if e["task"] == "relu"]
    assert demoted["demoted"] and demoted["false_hits"] == 1
    # the demoted entry serves no one any more; sigmoid's own verified plan serves tanh instead
    served = cache.serve(tanh.sig, tanh.own, MACHINE, tanh.structure)
    assert served.tier == "structural" and served.cached.task == "sigmoid"
    assert TaskView(0, "sigmoid", "verified", notes=res.notes, plan_cache_hit=False).plan_cache_tier == "false hit"


# ------------------------------------------------------------------ agentforge cache stats


def test_cache_stats_json_reports_both_tiers_false_hits_and_savings(tmp_path, gemms):
    path = tmp_path / "memory.sqlite"
    with PlanCache(path) as c:
        gelu, leaky, relu = gemms["gelu"], gemms["leaky"], gemms["relu"]
        store_verified(c, gelu, fused_plan(gelu))
        c.serve(gelu.sig, gelu.own, MACHINE, gelu.structure)                  # exact
        served = c.serve(leaky.sig, leaky.own, MACHINE, leaky.structure)      # structural
        c.false_hit(served.cached)
        c.serve(relu.sig, relu.own, MACHINE, relu.structure)                  # miss
        c.record_saved(planner_calls=1, tokens=1234, search_evaluations=200)
    proc = subprocess.run([sys.executable, "-m", "agentforge.cli", "cache", "stats", "--db", str(path), "--json"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    stats = json.loads(proc.stdout)
    expected = {"hits": 2, "exact_hits": 1, "class_hits": 1, "false_hits": 1, "misses": 1,
                "planner_calls_saved": 1, "tokens_saved": 1234, "search_evaluations_saved": 200,
                "entries": 1, "structural_entries": 1, "demoted": 1}
    assert {k: stats[k] for k in expected} == expected
    assert stats["hit_rate"] == pytest.approx(2 / 3) and stats["false_hit_rate"] == pytest.approx(1 / 2)


# ------------------------------------------------------------------ the review shows the tier


@pytest.mark.parametrize("notes, hit, tier, badge", [
    (["plan cache: structural hit (structure s, plan of linear_bias_gelu re-bound to this graph)"], True,
     "structural", "structural tier"),
    (["plan cache: exact hit (key k, verified in its own size class)"], True, "exact", "exact tier"),
    (["plan cache: structural hit (structure s, plan of relu re-bound to this graph)",
      "plan cache: false hit (structural tier, the plan of relu failed verification here; entry demoted, "
      "the planner was asked)"], False, "false hit", "false hit"),
    (["plan cache: miss"], False, "miss", None),
    ([], None, None, None),                                     # no plan cache in this run
])
def test_the_review_shows_which_tier_served_each_task(notes, hit, tier, badge):
    from rich.console import Console

    from agentforge.review.data import Review
    from agentforge.review.html import environment
    from agentforge.review.terminal import header

    t = TaskView(0, "gemm_relu_divide", "verified", plan_cache_hit=hit, plan_source="cache" if hit else "planner",
                 notes=notes)
    assert t.plan_cache_tier == tier
    review = Review(Path("run"), True, {}, {}, "sn40l", {}, [t])
    html = environment().get_template("task.html.j2").render(t=t, review=review)
    badges = [b for b in ("structural tier", "exact tier", "false hit")
              if f'<span class="badge cache">{b}</span>' in html]
    assert badges == ([badge] if badge else [])
    console = Console(record=True, width=200)
    console.print(header(review, t))
    text = console.export_text()
    assert (f", {tier})" in text) == (tier in ("exact", "structural", "false hit"))
