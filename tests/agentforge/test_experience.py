"""Specification tests for the experience library (agentforge.store.experience): one
representative per isomorphism class of verified answers (alpha-renamed kernels and
re-parametrised plans collapse), the shortest kept (then the fastest), success-rate levels,
the adaptive demonstration schedule (hard first, widen on stall, restart at hard on
improvement), tuner priors per signature class, and persistence in SQLite."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import asp_lang
from agentforge import author
from agentforge.agents.roles import Candidate, Demo
from agentforge.capture import capture_at, signature
from agentforge.store.db import UnverifiedError
from agentforge.store.experience import (DemoSchedule, ExperienceLibrary, InvalidExperienceError, kernel_form,
                                         plan_structure, stratify)
from agentforge.store.plan_cache import PlanCache
from agentforge.tasks import load_task

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "docs" / "examples").glob("*.asp"))
SUITE = ROOT / "evals" / "suite"

VECTOR_ADD = (ROOT / "docs" / "examples" / "vector_add.asp").read_text()
# vector_add.asp with every identifier renamed, other comments and another layout
VECTOR_ADD_RENAMED = """\
# my own elementwise sum
kernel add_vectors(lhs: f32[LEN], rhs: f32[LEN]) -> (out: f32[LEN]) {
    sizes LEN = 65536
    fn plus(p, q) = p + q   # the tile function
    s1 = load(lhs, tile=[1024], par=2)
    s2 = load(rhs, tile=[1024], par=2)

    s3 = map(s1, s2, fn=plus, par=4)
    store(out, s3, par=2)
}
"""


def ok(speedup=1.0):
    return {"verified": True, "speedup": speedup}


def renamed(source: str, suffix: str = "_renamed") -> str:
    """``source`` with every user identifier renamed (textually; keyword arguments untouched)."""
    k = asp_lang.parse(source)
    names = {k.name, *(p.name for p in (*k.params, *k.results)), *(s.name for s in k.sizes),
             *(f.name for f in k.fns), *(p for f in k.fns for p in f.params),
             *(let.name for f in k.fns for let in f.lets), *(t for s in k.body for t in s.targets)}
    pattern = re.compile(r"\b(" + "|".join(sorted(map(re.escape, names), key=len, reverse=True)) + r")\b(?!=)")
    return pattern.sub(lambda m: m.group(1) + suffix, source)


@pytest.fixture
def lib(tmp_path):
    with ExperienceLibrary(tmp_path / "memory.sqlite") as library:
        yield library


@pytest.fixture(scope="module")
def sigs():
    task = load_task(SUITE / "softmax.py")
    return {
        "small": signature(capture_at(task, {"BATCH": 8, "DIM": 64}, meta=True)),
        "large": signature(capture_at(task, {"BATCH": 64, "DIM": 4096}, meta=True)),
        "other": signature(capture_at(load_task(SUITE / "log_softmax.py"), None, meta=True)),
    }


# ------------------------------------------------------------------ kernel classes


def test_alpha_renamed_kernels_have_one_canonical_form():
    a, b = kernel_form(VECTOR_ADD), kernel_form(VECTOR_ADD_RENAMED)
    assert a.digest == b.digest and a.canonical == b.canonical
    assert "#" not in a.canonical and "vector_add" not in a.canonical
    assert a.normalised != b.normalised                    # names as written are kept there


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_every_example_and_its_renamed_copy_collapse_to_one_class(lib, path):
    source = path.read_text()
    copy = renamed(source)
    assert copy != source and asp_lang.parse(copy)
    first = lib.add(path.stem, "key", "kernel", source, ok(1.0))
    second = lib.add(path.stem, "key", "kernel", copy, ok(1.0))
    assert first.status == "new" and second.status == "duplicate"
    assert first.class_hash == second.class_hash
    (only,) = lib.experiences()
    assert only["source"] == source and only["members"] == 2     # the shorter names stay


def test_different_kernels_are_different_classes(lib):
    for path in EXAMPLES:
        lib.add(path.stem, "key", "kernel", path.read_text(), ok())
    assert len(lib.experiences()) == len(EXAMPLES)
    # one changed literal is another kernel
    assert lib.add("vector_add", "key", "kernel", VECTOR_ADD.replace("par=4", "par=8"), ok()).status == "new"


def test_the_shortest_is_kept_then_the_fastest(lib):
    long_names = renamed(VECTOR_ADD, "_with_a_long_name")
    assert lib.add("t", "key", "kernel", long_names, ok(3.0)).status == "new"
    res = lib.add("t", "key", "kernel", VECTOR_ADD, ok(1.0))      # shorter though slower
    assert res.status == "replaced"
    assert lib.experiences()[0]["source"] == VECTOR_ADD
    # same length (one-letter renames; comments do not count): the faster wins, a slower one does not
    equal = VECTOR_ADD.replace("fn add(x, y) = x + y", "fn add(u, v) = u + v") + "# trailing comment\n"
    assert len(kernel_form(equal).normalised) == len(kernel_form(VECTOR_ADD).normalised)
    assert lib.add("t", "key", "kernel", equal, ok(0.5)).status == "duplicate"
    assert lib.add("t", "key", "kernel", equal, ok(1.5)).status == "replaced"
    entry = lib.experiences()[0]
    assert entry["source"] == equal and entry["speedup"] == 1.5 and entry["members"] == 4


def test_only_verified_parsable_answers_are_added(lib):
    with pytest.raises(UnverifiedError):
        lib.add("t", "key", "kernel", VECTOR_ADD, {"verified": False, "speedup": 2.0})
    with pytest.raises(UnverifiedError):
        lib.add("t", "key", "kernel", VECTOR_ADD, {"speedup": 2.0})
    with pytest.raises(InvalidExperienceError):
        lib.add("t", "key", "kernel", "kernel broken(", ok())
    assert lib.experiences() == []


def test_a_candidate_is_accepted(lib):
    cand = Candidate(kind="kernel", source=VECTOR_ADD)
    assert lib.add("vector_add", "key", "kernel", cand, ok()).status == "new"


# ------------------------------------------------------------------ plan classes


def plan(regions, params=None, notes=""):
    return author.Plan([author.Region(t, list(n), dict(params or {})) for t, n in regions], notes=notes)


def test_plans_are_deduplicated_by_structure(lib):
    a = plan([("row", [0, 1]), ("single", [2])], {"rows": 4})
    b = plan([("single", [2]), ("row", [1, 0])], {"rows": 16, "par": 256}, notes="other notes")
    assert plan_structure(a) == plan_structure(b)
    assert lib.add("t", "key", "plan", a, ok(1.2)).status == "new"
    assert lib.add("t", "key", "plan", b.to_dict(), ok(1.8)).status == "replaced"    # faster, same length
    assert lib.add("t", "key", "plan", a, ok(1.0)).status == "duplicate"
    assert lib.add("t", "key", "plan", plan([("row", [0]), ("row", [1]), ("single", [2])]), ok()).status == "new"
    assert lib.add("u", "other-key", "plan", a, ok()).status == "new"               # another computation
    kept = [e for e in lib.experiences("plan") if e["signature_key"] == "key"]
    assert len(kept) == 2 and kept[0]["plan"]["regions"][0]["params"] == {"rows": 16, "par": 256}


# ------------------------------------------------------------------ levels


def test_stratify_by_tertiles_of_success_rate():
    levels = stratify({"a": 0.1, "b": 0.2, "c": 0.5, "d": 0.6, "e": 0.9, "f": 1.0})
    assert levels == {"a": "hard", "b": "hard", "c": "medium", "d": "medium", "e": "easy", "f": "easy"}
    assert stratify({"x": 0.4, "y": 0.4, "z": 0.4}) == {"x": "medium", "y": "medium", "z": "medium"}
    assert stratify({"only": 0.5}) == {"only": "medium"}
    tied = stratify({"a": 0.0, "b": 0.5, "c": 0.5, "d": 1.0})
    assert tied["b"] == tied["c"] and tied["a"] == "hard" and tied["d"] == "easy"
    assert stratify({}) == {}


def record(lib, task, successes, failures):
    for _ in range(successes):
        lib.record_attempt(task, "key", True)
    for _ in range(failures):
        lib.record_attempt(task, "key", False)


def test_levels_of_solved_tasks_by_observed_success_rate(lib):
    record(lib, "rarely", 1, 9)
    record(lib, "sometimes", 5, 5)
    record(lib, "always", 4, 0)
    record(lib, "never", 0, 6)                         # unsolved: no level
    lib.add("solved_offline", "k2", "kernel", VECTOR_ADD, ok())   # no attempts recorded: rate 1.0
    assert lib.success_rates()["rarely"] == {"attempts": 10, "successes": 1, "rate": 0.1}
    levels = lib.levels()
    assert set(levels) == {"rarely", "sometimes", "always", "solved_offline"}
    assert levels["rarely"] == "hard" and levels["sometimes"] == "medium"
    assert levels["always"] == levels["solved_offline"] == "easy"


# ------------------------------------------------------------------ demonstrations


@pytest.fixture
def stocked(lib):
    """Two hard, one medium and one easy task, each with a verified kernel."""
    kernels = {p.stem: p.read_text() for p in EXAMPLES}
    for task, src, (good, bad) in [("flash", kernels["flash_attention"], (1, 9)),
                                   ("moe", kernels["moe_top1"], (1, 8)),
                                   ("norm", kernels["layernorm"], (5, 5)),
                                   ("add", kernels["vector_add"], (9, 1)),
                                   ("gemm", kernels["gemm"], (6, 4)),
                                   ("softmax", kernels["softmax_online"], (9, 0))]:
        record(lib, task, good, bad)
        lib.add(task, f"key-{task}", "kernel", src, ok())
    lib.add("flash", "key-flash", "kernel", kernels["softmax_3pass"], ok())   # a second answer for flash
    return lib


def test_demonstrations_follow_the_stage(stocked):
    levels = stocked.levels()
    assert [t for t in sorted(levels) if levels[t] == "hard"] == ["flash", "moe"]
    hard = stocked.demonstrations(10, 0)
    assert all(isinstance(d, Demo) and d.level == "hard" for d in hard)
    assert {d.task for d in hard} == {"flash", "moe"} and len(hard) == 3
    assert [d.task for d in hard[:2]] == ["flash", "moe"]      # one per task first, lowest rate first
    wider = stocked.demonstrations(10, 1)
    assert [d.level for d in wider] == ["hard"] * 3 + ["medium"] * 2
    everything = stocked.demonstrations(10, 2)
    assert len(everything) == 7 and [d.level for d in everything][-2:] == ["easy", "easy"]
    assert everything[0].source and everything[0].kind == "kernel" and everything[0].extra["class_hash"]


def test_demonstrations_respect_k_and_exclusions(stocked):
    assert [d.task for d in stocked.demonstrations(2, 2)] == ["flash", "moe"]
    assert stocked.demonstrations(0, 2) == []
    assert {d.task for d in stocked.demonstrations(10, 0, exclude_tasks={"flash"})} == {"moe"}
    assert stocked.demonstrations(10, 2, kind="plan") == []
    with pytest.raises(ValueError):
        stocked.demonstrations(3, 3)


def test_schedule_starts_hard_widens_on_stall_and_restarts_on_improvement():
    s = DemoSchedule()
    assert s.stage == 0 and s.levels == ("hard",)
    assert s.update(0.2) == 0                 # improved on 0.0: stay at hard
    assert s.update(0.2) == 1 and s.levels == ("hard", "medium")      # stalled: widen
    assert s.update(0.1) == 2 and s.levels == ("hard", "medium", "easy")
    assert s.update(0.4) == 0 and s.best_pass_rate == 0.4             # improved: restart at hard
    s.update(0.4)
    s.update(0.4)
    assert s.stage == 2 and not s.exhausted
    s.update(0.4)                              # stalled with everything shown: demonstrations ran out
    assert s.exhausted and s.stage == 2
    s.update(0.5)
    assert not s.exhausted and s.stage == 0


def test_schedule_patience_and_persistence(lib):
    s = DemoSchedule(patience=2)
    s.update(0.3)
    s.update(0.3)
    assert s.stage == 0                        # one stall is not enough
    s.update(0.3)
    assert s.stage == 1
    lib.save_schedule("campaign", s)
    back = lib.load_schedule("campaign")
    assert back == s and lib.load_schedule("missing") is None
    assert lib.demonstrations(5, s) == []      # a schedule can be passed as the stage


# ------------------------------------------------------------------ priors


def test_priors_per_template_from_the_fastest_plans(lib, sigs):
    small, large, other = sigs["small"], sigs["large"], sigs["other"]
    assert small.key() == large.key() and small.class_key() != large.class_key()
    lib.add("softmax", small, "plan", plan([("row", [0])], {"rows": 4, "par": 64}), ok(1.5))
    lib.add("softmax", small, "plan", plan([("row", [0])], {"rows": 8, "par": 256}), ok(2.5))
    lib.add("softmax", small, "plan", plan([("single", [0])], {"compute": 16, "memory": 8}), ok(1.1))
    lib.add("softmax", small, "plan", plan([("row", [0])], {"rows": 1, "par": 16}), ok(0.9))
    assert lib.priors(small) == {"row": {"rows": 8, "par": 256}, "single": {"compute": 16, "memory": 8}}
    # another size class of the same computation: its own plans first, the key's otherwise
    assert lib.priors(large) == lib.priors(small)
    lib.add("softmax_big", large, "plan", plan([("row", [0])], {"rows": 64, "par": 16}), ok(1.2))
    assert lib.priors(large) == {"row": {"rows": 64, "par": 16}}
    assert lib.priors(other) == {}
    # they are what author.tune takes
    assert set(lib.priors(small)) <= set(author.TEMPLATES)


def test_attention_priors_are_kept(lib, sigs):
    params = {"tm": 64, "tk": 128, "par": 256, "par_mem": 4, "par_buf": 8, "kv_buf": 1}
    lib.add("attention", sigs["small"], "plan", plan([("attention", [0])], params), ok(2.2))
    assert lib.priors(sigs["small"]) == {"attention": params}


def _insert_prior(c, key, class_key, template, params_json, speedup, task):
    """A row written as an older schema version would (the library cannot write one itself)."""
    c.execute("INSERT INTO experience_priors (signature_key, class_key, template, params_json, speedup, task,"
              " updated_at) VALUES (?, ?, ?, ?, ?, ?, 0)", (key, class_key, template, params_json, speedup, task))


def test_a_version_1_database_migrates_and_keeps_its_priors(tmp_path, sigs):
    # version 1 refused the 'attention' template (a CHECK constraint SQLite cannot alter)
    import sqlite3

    from agentforge.store.db import Database
    from agentforge.store.experience import EXPERIENCE_SCHEMA

    path = tmp_path / "old.sqlite"
    key, class_key = sigs["small"].key(), sigs["small"].class_key()
    with Database(path, EXPERIENCE_SCHEMA.upto(1)) as old:
        assert old.version == 1
        with old.transaction() as c:
            _insert_prior(c, key, class_key, "row", '{"rows": 8}', 1.5, "softmax")
            with pytest.raises(sqlite3.IntegrityError):
                _insert_prior(c, key, class_key, "attention", "{}", 2.0, "softmax")
    with ExperienceLibrary(path) as lib:
        assert lib.db.version == EXPERIENCE_SCHEMA.version >= 2
        assert lib.priors(sigs["small"]) == {"row": {"rows": 8}}
        lib.add("attention", sigs["small"], "plan", plan([("attention", [0])], {"tm": 64}), ok(2.0))
        assert lib.priors(sigs["small"]) == {"row": {"rows": 8}, "attention": {"tm": 64}}


def test_a_version_2_database_migrates_and_accepts_moe_priors(tmp_path, sigs):
    # version 2 refused the 'moe' template (the routed mixture of experts): migration 3 rebuilds the table
    import sqlite3

    from agentforge.store.db import Database
    from agentforge.store.experience import EXPERIENCE_SCHEMA

    path = tmp_path / "v2.sqlite"
    key, class_key = sigs["small"].key(), sigs["small"].class_key()
    with Database(path, EXPERIENCE_SCHEMA.upto(2)) as old:
        assert old.version == 2
        with old.transaction() as c:
            _insert_prior(c, key, class_key, "attention", '{"tm": 64}', 2.0, "attn")
            with pytest.raises(sqlite3.IntegrityError):
                _insert_prior(c, key, class_key, "moe", "{}", 9.0, "moe")
    params = {"tk": 128, "par": 960, "par_buf": 448, "par_mem": 8}
    with ExperienceLibrary(path) as lib:
        assert lib.db.version == EXPERIENCE_SCHEMA.version >= 3
        assert lib.priors(sigs["small"]) == {"attention": {"tm": 64}}
        lib.add("moe", sigs["small"], "plan", plan([("moe", [0])], params), ok(19.0))
        assert lib.priors(sigs["small"]) == {"attention": {"tm": 64}, "moe": params}


# ------------------------------------------------------------------ persistence


def test_everything_survives_a_reopen_and_shares_a_file_with_the_plan_cache(tmp_path, sigs):
    path = tmp_path / "memory.sqlite"
    with ExperienceLibrary(path) as lib:
        lib.add("vector_add", "key", "kernel", VECTOR_ADD, ok(1.3))
        lib.add("softmax", sigs["small"], "plan", plan([("row", [0])], {"rows": 4}), ok(2.0))
        record(lib, "vector_add", 2, 2)
        lib.save_schedule("run", DemoSchedule(stage=1))
    with PlanCache(path) as cache:                           # another component in the same file
        assert cache.stats()["entries"] == 0
    with ExperienceLibrary(path) as again:
        assert len(again.experiences()) == 2
        assert again.success_rates()["vector_add"]["rate"] == 0.5
        assert again.priors(sigs["small"]) == {"row": {"rows": 4}}
        assert again.load_schedule("run").stage == 1
        assert set(again.levels()) == {"vector_add", "softmax"}
        assert again.stats()["classes"] == 2
        again.clear()
        assert again.experiences() == [] and again.levels() == {}
