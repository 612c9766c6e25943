"""``torch.compile(model, backend="agentforge")``: run the parts of a model the library covers on
the emulated chip, and the rest eagerly.

Configuration (highest first): ``options={...}`` of torch.compile, then the ``[torch]`` table
of ``agentforge.toml`` in the current directory (or the file named by ``options["config"]``):

    [torch]
    library = "runs/default/library"   # a library folder, or a campaign's run folder
    machine = "sn40l"                  # default: the library's machine
    namespace = "rdu"                  # torch.ops.<namespace>.<op>
    strict = false                     # true: an internal error raises instead of running eagerly
    fallback = "error"                 # "torch": a library op called at unverified sizes runs the reference
    verify_new_sizes = false

The backend never turns a working model into a failing one: if export, matching or a kernel
fails, it warns and runs the graph dynamo gave it, eagerly (``strict = true`` raises instead).
Configuration mistakes (no library, unknown key) are raised: they are the user's to fix.
"""

from __future__ import annotations

import os
import threading
import tomllib
import warnings
import weakref
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from agentforge.torch.ops import FALLBACKS, TorchBridgeError, TorchLibrary, load_library

__all__ = ["BackendConfig", "agentforge_backend", "compiled_graphs", "get_library", "CONFIG_FILE"]

CONFIG_FILE = "agentforge.toml"


@dataclass(frozen=True)
class BackendConfig:
    """What the user chose for the backend (see the module docstring for the file form)."""
    library: str | None = None
    machine: str | None = None
    namespace: str = "rdu"
    strict: bool = False
    fallback: str = "error"
    verify_new_sizes: bool = False

    @staticmethod
    def resolve(options: Mapping[str, Any] | None = None) -> "BackendConfig":
        """Merge ``options`` over the ``[torch]`` table of the config file; validate every field."""
        options = dict(options or {})
        explicit = options.get("config") is not None
        path = Path(options.pop("config", None) or CONFIG_FILE)
        base: dict[str, Any] = {}
        if path.is_file():
            try:
                data = tomllib.loads(path.read_text())
            except tomllib.TOMLDecodeError as e:
                raise TorchBridgeError(f"{path}: not valid TOML ({e})") from None
            base = dict(data.get("torch", {}))
            if "library" in base and not Path(base["library"]).is_absolute():
                base["library"] = str((path.parent / base["library"]).resolve())
        elif explicit:
            raise TorchBridgeError(f"config file {path} does not exist")
        merged = {**base, **options}
        known = {f.name: f for f in fields(BackendConfig)}
        for k, v in merged.items():
            if k not in known:
                raise TorchBridgeError(f"unknown agentforge backend option {k!r} (from {'options' if k in options else path}); "
                                       f"known: {', '.join(known)}")
            want = bool if k in ("strict", "verify_new_sizes") else str
            if v is not None and not isinstance(v, want):
                raise TorchBridgeError(f"agentforge backend option {k!r} must be a {want.__name__}, got {v!r}")
        cfg = replace(BackendConfig(), **merged)
        if cfg.fallback not in FALLBACKS:
            raise TorchBridgeError(f"agentforge backend option fallback={cfg.fallback!r} is not one of {FALLBACKS}")
        if not cfg.library:
            raise TorchBridgeError("the agentforge backend needs a kernel library\n  how to fix: "
                                   "torch.compile(model, backend='agentforge', options={'library': 'OUT/library'}) "
                                   f"or `[torch] library = \"...\"` in {CONFIG_FILE}")
        return cfg


_LOADED: dict[tuple, TorchLibrary] = {}
_LOAD_LOCK = threading.RLock()


def get_library(cfg: BackendConfig) -> TorchLibrary:
    """The library of ``cfg``, loaded (and its ops registered) once per process."""
    key = (os.path.abspath(cfg.library or ""), cfg.namespace, cfg.machine, cfg.fallback, cfg.verify_new_sizes)
    with _LOAD_LOCK:
        if key not in _LOADED:
            _LOADED[key] = load_library(cfg.library or "", cfg.namespace, machine=cfg.machine, fallback=cfg.fallback,
                                        verify_new_sizes=cfg.verify_new_sizes)
        return _LOADED[key]


class _Compiled:
    """What the backend hands back to dynamo: plans offload on the first call, then runs it."""

    def __init__(self, gm: torch.fx.GraphModule, cfg: BackendConfig):
        self.gm = gm
        self.cfg = cfg
        self.plan: Any = None
        self.error: str | None = None
        self.calls = 0

    def __call__(self, *args: Any) -> Any:
        self.calls += 1
        if self.plan is None and self.error is None:
            try:
                from agentforge.torch.match import export_graph, plan_offload

                tl = get_library(self.cfg)
                ep, graph = export_graph(self.gm, args, "compiled graph")
                self.plan = plan_offload(tl, ep, graph)
            except Exception as e:  # noqa: BLE001 - anything: the model must keep working
                self._fail("planning the offload", e)
        if self.plan is not None:
            try:
                return self.plan.run(args)
            except Exception as e:  # noqa: BLE001
                self._fail("running the offloaded graph", e)
        return self.gm(*args)

    def _fail(self, what: str, e: Exception) -> None:
        if self.cfg.strict:
            raise
        self.plan = None
        self.error = f"{what} failed: {type(e).__name__}: {e}"
        warnings.warn(f"agentforge backend: {self.error}; running this graph eagerly (strict=True raises instead)",
                      stacklevel=3)


_ORDER: list[weakref.ref] = []


def compiled_graphs() -> list[_Compiled]:
    """The graphs the backend compiled in this process, oldest first (``.plan``, ``.error``, ``.calls``)."""
    return [c for c in (r() for r in _ORDER) if c is not None]


def agentforge_backend(gm: torch.fx.GraphModule, example_inputs: Sequence[Any], options: Mapping[str, Any] | None = None,
                       **_: Any) -> Callable[..., Any]:
    """The torch.compile backend (entry point ``torch_dynamo_backends: agentforge``)."""
    cfg = BackendConfig.resolve(options)
    compiled = _Compiled(gm, cfg)
    _ORDER.append(weakref.ref(compiled))
    return compiled
