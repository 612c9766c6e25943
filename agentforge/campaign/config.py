"""Campaign configuration: defaults, then ``agentforge.toml`` (user level, then project level),
then command-line flags. Secrets never come from a file: keys are read from the environment
variable the ``[llm]`` table names (``api_key_env``).

``agentforge.toml``::

    [campaign]
    suite = "evals/suite"        # a folder of tasks
    llm = "offline"              # offline | openai | replay
    machine = "sn40l"
    workers = 2                  # tasks solved at once (worker processes; default: CPUs, at most 4)
    executor = "local"           # local | ray
    ray_address = ""             # "" starts a local Ray instance
    attempts_per_task = 4
    workers_per_task = 1
    budget = "attempts=400,tokens=2000000,cost=5,minutes=60"
    task_timeout_s = 900
    memory = ""                  # a shared plan cache / experience file ("" = the run directory's)

    [llm]                        # agentforge.llm.LLMConfig fields (model, base_url, prices, ...)
    model = "gpt-4.1-mini"
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import AgentforgeError

LLM_CHOICES = ("offline", "openai", "replay")
EXECUTORS = ("local", "ray")
CONFIG_NAME = "agentforge.toml"
_SECRET_WORDS = ("api_key", "apikey", "secret", "password", "token_value", "bearer")


class ConfigError(AgentforgeError):
    """A campaign configuration (file or flags) is invalid; the message says what to fix."""


@dataclass(frozen=True)
class Budget:
    """Hard limits over a whole campaign (None: unlimited).

    ``attempts`` counts evaluated candidates; ``tokens`` and ``cost`` (USD) count LLM use;
    ``minutes`` is wall time. A campaign that reaches one stops, says which, and can be resumed
    with a larger budget."""
    attempts: int | None = None
    tokens: int | None = None
    cost: float | None = None
    minutes: float | None = None

    @staticmethod
    def parse(text: str | dict | None) -> "Budget":
        if text is None or text == "":
            return Budget()
        items: dict[str, Any]
        if isinstance(text, dict):
            items = dict(text)
        else:
            items = {}
            for part in str(text).split(","):
                part = part.strip()
                if not part:
                    continue
                if "=" not in part:
                    raise ConfigError(f"budget: {part!r} is not NAME=VALUE\n  how to fix: write e.g. "
                                      f"--budget attempts=200,tokens=1000000,cost=5,minutes=30")
                k, v = (s.strip() for s in part.split("=", 1))
                items[k] = v
        out: dict[str, Any] = {}
        for k, v in items.items():
            if k not in ("attempts", "tokens", "cost", "minutes"):
                raise ConfigError(f"budget: unknown limit {k!r}\n  how to fix: use attempts, tokens, cost or minutes")
            try:
                num = float(v)
            except (TypeError, ValueError):
                raise ConfigError(f"budget: {k}={v!r} is not a number") from None
            if not math.isfinite(num) or num <= 0:
                raise ConfigError(f"budget: {k} must be a positive number, got {v!r}")
            if k in ("attempts", "tokens"):
                if num != int(num):
                    raise ConfigError(f"budget: {k} must be a whole number, got {v!r}")
                num = int(num)
            out[k] = num
        return Budget(**out)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def bundled_suite() -> Path:
    """The suite shipped with agentforge (evals/suite next to the package)."""
    return Path(__file__).resolve().parents[2] / "evals" / "suite"


@dataclass(frozen=True)
class CampaignConfig:
    suite: str = ""
    llm: str = "offline"
    machine: str = "sn40l"
    out: str = ""
    workers: int = field(default_factory=lambda: max(1, min(4, os.cpu_count() or 1)))
    executor: str = "local"
    ray_address: str = ""
    attempts_per_task: int = 4
    workers_per_task: int = 1
    budget: Budget = field(default_factory=Budget)
    task_timeout_s: float = 900.0
    eval_timeout_s: float = 120.0
    memory_mb: int = 4096
    memory: str = ""
    seed: int = 0
    tasks: tuple[str, ...] = ()
    llm_config: dict = field(default_factory=dict)   # the [llm] table (never a key)

    def __post_init__(self) -> None:
        _validate(self)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["tasks"] = list(self.tasks)
        return d

    def replace(self, **changes: Any) -> "CampaignConfig":
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


def _validate(c: CampaignConfig) -> None:
    def need(ok: bool, what: str) -> None:
        if not ok:
            raise ConfigError(f"campaign config: {what}")

    for name in ("suite", "llm", "machine", "out", "executor", "ray_address", "memory"):
        v = getattr(c, name)
        need(isinstance(v, str), f"{name} must be a string, got {v!r}")
    need(isinstance(c.seed, int) and not isinstance(c.seed, bool), f"seed must be a whole number, got {c.seed!r}")
    need(all(isinstance(t, str) for t in c.tasks), f"tasks must be task names, got {list(c.tasks)!r}")
    need(c.llm in LLM_CHOICES, f"llm must be one of {', '.join(LLM_CHOICES)}, got {c.llm!r}")
    need(c.executor in EXECUTORS, f"executor must be one of {', '.join(EXECUTORS)}, got {c.executor!r}")
    for name in ("workers", "attempts_per_task", "workers_per_task", "memory_mb"):
        v = getattr(c, name)
        need(isinstance(v, int) and not isinstance(v, bool) and v >= 1, f"{name} must be a whole number >= 1, got {v!r}")
    for name in ("task_timeout_s", "eval_timeout_s"):
        v = getattr(c, name)
        need(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0,
             f"{name} must be a positive number of seconds, got {v!r}")
    need(isinstance(c.budget, Budget), "budget must be a Budget")
    for k in c.llm_config:
        need(not any(w in k.lower() for w in _SECRET_WORDS) or k == "api_key_env",
             f"[llm] {k}: secrets are never read from a file\n  how to fix: remove it and set the key in the "
             f"environment variable named by api_key_env (default OPENAI_API_KEY)")


_CAMPAIGN_KEYS = {f.name for f in dataclasses.fields(CampaignConfig)} - {"llm_config", "tasks"} | {"tasks"}


def config_files(cwd: Path | None = None) -> list[Path]:
    """The configuration files read, lowest precedence first: user level, then project level."""
    home = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    cands = [home / "agentforge" / CONFIG_NAME, (cwd or Path.cwd()) / CONFIG_NAME]
    return [p for p in cands if p.is_file()]


def load_config(files: list[Path] | None = None, **flags: Any) -> CampaignConfig:
    """Defaults < config files (in order) < flags (None means "not given")."""
    values: dict[str, Any] = {}
    llm_table: dict[str, Any] = {}
    for path in (config_files() if files is None else files):
        try:
            data = tomllib.loads(Path(path).read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: not valid TOML ({e})") from None
        except OSError as e:
            raise ConfigError(f"{path}: cannot read it ({e.strerror})") from None
        unknown = set(data) - {"campaign", "llm", "torch"}
        if unknown:
            raise ConfigError(f"{path}: unknown table(s) {', '.join(sorted(unknown))}\n  how to fix: use [campaign], "
                              f"[llm] or [torch]")
        for table in ("campaign", "llm", "torch"):
            if not isinstance(data.get(table, {}), dict):
                raise ConfigError(f"{path}: {table} must be a table\n  how to fix: write [{table}] on its own line "
                                  f"and the settings under it")
        camp = data.get("campaign", {})
        bad = set(camp) - _CAMPAIGN_KEYS
        if bad:
            raise ConfigError(f"{path}: [campaign] has unknown key(s) {', '.join(sorted(bad))}\n  known: "
                              f"{', '.join(sorted(_CAMPAIGN_KEYS))}")
        values.update(camp)
        llm_table.update(data.get("llm", {}))
    values.update({k: v for k, v in flags.items() if v is not None})
    if "budget" in values and not isinstance(values["budget"], Budget):
        values["budget"] = Budget.parse(values["budget"])
    if "tasks" in values:
        t = values["tasks"]
        if not isinstance(t, (str, list, tuple)):
            raise ConfigError(f"campaign config: tasks must be a list of task names or a comma-separated string, "
                              f"got {t!r}")
        values["tasks"] = tuple(x.strip() if isinstance(x, str) else x
                                for x in (t.split(",") if isinstance(t, str) else t) if not isinstance(x, str) or x.strip())
    try:
        return CampaignConfig(**values, llm_config=llm_table)
    except TypeError as e:
        raise ConfigError(f"campaign config: {e}") from None


#: settings a run keeps for good (flag -> where the stored config holds it); --resume may repeat them
RESUME_FIXED = {"SUITE": "suite", "--llm": "llm", "--model": "llm_config.model", "--base-url": "llm_config.base_url",
                "--machine": "machine", "--attempts": "attempts_per_task", "--tasks": "tasks"}


def _same_place(a: str, b: str) -> bool:
    """Two spellings of one file or folder (relative or absolute, through links)?"""
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    try:
        if pa.exists() and pb.exists():
            return os.path.samefile(pa, pb)
    except OSError:
        pass
    return pa.resolve() == pb.resolve()


def resume_conflicts(stored: dict, given: dict[str, Any]) -> list[str]:
    """Flags of a ``--resume`` command line (``given``: flag -> value, None = not given) that
    differ from what the run started with (``stored``: its config). The same values are fine,
    so re-running the first command plus ``--resume`` works; the suite and a machine file are
    compared as places on disk, not as strings. Returns e.g. ``["SUITE (run: evals/suite, given: x)"]``."""
    out = []
    for flag, value in given.items():
        if value is None or flag not in RESUME_FIXED:
            continue
        key = RESUME_FIXED[flag]
        have = stored.get("llm_config", {}).get(key.split(".", 1)[1]) if key.startswith("llm_config.") \
            else stored.get(key)
        if key == "suite":
            same = _same_place(str(value), str(have or bundled_suite()))
        elif key == "machine":
            same = str(value) == str(have) or (Path(str(value)).suffix == ".toml" and _same_place(str(value), str(have)))
        elif key == "tasks":
            names = value.split(",") if isinstance(value, str) else list(value)
            same = {n.strip() for n in names if n.strip()} == set(have or ())
        else:
            same = value == have
        if not same:
            out.append(f"{flag} (the run has {have!r}, given {value!r})")
    return out


__all__ = ["CampaignConfig", "Budget", "ConfigError", "load_config", "config_files", "bundled_suite",
           "resume_conflicts", "RESUME_FIXED"]
