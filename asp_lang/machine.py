"""Machine descriptions: the emulated RDU's units, memories and clock, from TOML.

Presets ship in ``asp_lang/machines/``; users pass their own file with the same fields.
Every field is validated with a message that names it.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import MISSING, dataclass, fields
from importlib import resources
from pathlib import Path

from .errors import MachineError, Span


@dataclass(frozen=True)
class PCU:
    count: int
    lanes: int
    stages: int
    tail_ops_per_lane: float
    f32_matmul_rate: float
    latency_cycles: int


@dataclass(frozen=True)
class PMU:
    count: int
    sram_kib: float
    bandwidth_bytes_per_cycle: float


@dataclass(frozen=True)
class AGCU:
    count: int
    bandwidth_bytes_per_cycle: float


@dataclass(frozen=True)
class Memory:
    capacity_gib: float
    bandwidth_gbs: float
    latency_ns: float
    max_outstanding: int


@dataclass(frozen=True)
class Network:
    fifo_depth: int
    route_cycles_per_element: float
    # optional (files written before it existed load with one hop): cycles for an element to
    # reach the consumer of a stream, and for its FIFO credit to come back to the producer
    send_latency_cycles: float = 1.0


@dataclass(frozen=True)
class Reconfig:
    cycles: int


@dataclass(frozen=True)
class Machine:
    name: str
    description: str
    clock_ghz: float
    pcu: PCU
    pmu: PMU
    agcu: AGCU
    hbm: Memory
    ddr: Memory
    network: Network
    reconfig: Reconfig

    # derived figures the timing model uses
    @property
    def pmu_bytes(self) -> float:
        return self.pmu.sram_kib * 1024

    @property
    def sram_bytes(self) -> float:
        return self.pmu_bytes * self.pmu.count

    def mem(self, tier: str) -> Memory:
        return self.hbm if tier == "hbm" else self.ddr

    def bytes_per_cycle(self, tier: str) -> float:
        return self.mem(tier).bandwidth_gbs / self.clock_ghz

    def latency_cycles(self, tier: str) -> float:
        return self.mem(tier).latency_ns * self.clock_ghz

    def mm_flops_per_cycle(self, dtype: str) -> float:
        """Systolic matmul flops per cycle of one PCU (2 per multiply-accumulate)."""
        rate = self.pcu.f32_matmul_rate if dtype in ("f32", "i32") else 1.0
        return 2.0 * self.pcu.lanes * self.pcu.stages * rate

    @property
    def simd_ops_per_cycle(self) -> float:
        return float(self.pcu.lanes * self.pcu.stages)

    def simd_ops_per_cycle_for(self, dtype: str) -> float:
        """SIMD element-ops per cycle of one PCU on operands of ``dtype``: lanes x stages, but
        never above the PCU's peak for that dtype. An element-op is a flop; if the SIMD stages
        could do 32-bit flops faster than the systolic array's f32 rate, an f32 matmul written
        as broadcast-multiply + reduce would run above the chip's f32 peak (docs/machine.md)."""
        return min(self.simd_ops_per_cycle, self.mm_flops_per_cycle(dtype))

    @property
    def tail_ops_per_cycle(self) -> float:
        return self.pcu.lanes * self.pcu.tail_ops_per_lane

    def peak_tflops(self, dtype: str = "bf16") -> float:
        return self.mm_flops_per_cycle(dtype) * self.pcu.count * self.clock_ghz / 1e3

    def summary(self) -> dict:
        return {"name": self.name, "clock_ghz": self.clock_ghz, "pcus": self.pcu.count,
                "pmus": self.pmu.count, "sram_mib": self.sram_bytes / 2**20,
                "hbm_gbs": self.hbm.bandwidth_gbs, "ddr_gbs": self.ddr.bandwidth_gbs,
                "peak_bf16_tflops": round(self.peak_tflops("bf16"), 1)}


_MAY_BE_ZERO = ("latency_ns", "send_latency_cycles")
_SECTIONS = {"pcu": PCU, "pmu": PMU, "agcu": AGCU, "hbm": Memory, "ddr": Memory,
             "network": Network, "reconfig": Reconfig}


def _build(cls, table, where: str):
    if not isinstance(table, dict):
        raise MachineError(f"[{where}] must be a table")
    names = {f.name: f for f in fields(cls)}
    unknown = set(table) - set(names)
    if unknown:
        raise MachineError(f"[{where}] has unknown field(s) {', '.join(sorted(unknown))} "
                           f"(fields: {', '.join(names)})")
    vals = {}
    for name, f in names.items():
        if name not in table:
            if f.default is not MISSING:  # an optional field: its default
                continue
            raise MachineError(f"[{where}] is missing '{name}'")
        v = table[name]
        want_int = f.type == "int"
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (want_int and not isinstance(v, int)):
            raise MachineError(f"[{where}] {name} must be {'an integer' if want_int else 'a number'}, got {v!r}")
        if v <= 0 and not (name in _MAY_BE_ZERO and v == 0):
            raise MachineError(f"[{where}] {name} must be positive, got {v}")
        vals[name] = v
    return cls(**vals)


def machine_from_dict(d: dict, origin: str = "<machine>") -> Machine:
    try:
        for key in ("name", "clock_ghz", *_SECTIONS):
            if key not in d:
                raise MachineError(f"missing '{key}'")
        unknown = set(d) - {"name", "description", "clock_ghz", *_SECTIONS}
        if unknown:
            raise MachineError(f"unknown key(s) {', '.join(sorted(unknown))}")
        clock = d["clock_ghz"]
        if isinstance(clock, bool) or not isinstance(clock, (int, float)) or clock <= 0:
            raise MachineError(f"clock_ghz must be a positive number, got {clock!r}")
        parts = {k: _build(c, d[k], k) for k, c in _SECTIONS.items()}
        return Machine(str(d["name"]), str(d.get("description", "")), float(clock), **parts)
    except MachineError as e:
        raise MachineError(f"machine description {origin}: {e.message}") from None


def presets() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("asp_lang").joinpath("machines").iterdir()
                  if p.name.endswith(".toml"))


def _field_span(text: str, section: str | None, key: str | None) -> Span | None:
    """Where ``key`` of ``[section]`` (top level when None) is written; the header when key is None."""
    cur = None
    for i, line in enumerate(text.splitlines(), 1):
        head = re.match(r"\s*\[\s*([\w-]+)\s*\]", line)
        if head:
            cur = head.group(1)
            if key is None and cur == section:
                return Span(i, line.index("[") + 1, line.index("]") + 2)
        elif cur == section and key and re.match(rf"\s*{re.escape(key)}\s*=", line):
            col = line.index(key) + 1
            return Span(i, col, col + len(key))
    return None


#: where a message of machine_from_dict / node_from_dict points: (pattern, section group, key group)
FIELD_MESSAGES = ((r"\[([\w-]+)\] is missing '(\w+)'", 1, None), (r"\[([\w-]+)\] has unknown field\(s\) (\w+)", 1, 2),
                  (r"\[([\w-]+)\] (\w+) must be", 1, 2), (r"\[([\w-]+)\] must be a table", None, 1),
                  (r"unknown key\(s\) ([\w-]+)", None, 1))


def _error_span(text: str, message: str, patterns) -> Span | None:
    """The line of a TOML file a description's message is about (it names section and field)."""
    for pat, sec, key in patterns:
        m = re.search(pat, message)
        if m:
            return _field_span(text, m.group(sec) if sec else None, m.group(key) if key else None)
    return None


def load_description(name_or_path: str | Path, kind: str, names: list[str], folder: tuple[str, ...],
                     build, patterns, preset_word: str = "a preset"):
    """``build(table, origin, base)`` of a preset named in ``names`` (a TOML file in the package's
    ``folder``) or of a TOML file (``base`` its folder, None for a preset): what load_machine and
    asp_lang.node.load_node share. A file that is missing, not text or not TOML, and a message of
    ``build`` that names a field (``patterns``, as FIELD_MESSAGES), are located in the file
    (``file.toml:LINE:COL``)."""
    s = str(name_or_path)
    if s in names:
        text = resources.files("asp_lang").joinpath(*folder).joinpath(f"{s}.toml").read_text()
        origin, where, base = f"preset {s}", f"{s}.toml", None
    else:
        p = Path(s)
        if not p.is_file():
            raise MachineError(f"unknown {kind} '{s}': not {preset_word} ({', '.join(names)}) or a file",
                               filename=s)
        try:
            text = p.read_text()
        except UnicodeDecodeError:
            raise MachineError(f"{kind} description {p} is not a UTF-8 text file", filename=str(p)) from None
        origin, where, base = str(p), str(p), p.parent
    try:
        d = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        pos = re.search(r"at line (\d+), column (\d+)", str(e))
        span = Span(int(pos.group(1)), int(pos.group(2))) if pos else None
        raise MachineError(f"{kind} description {origin} is not valid TOML: {e}", span, where, text) from None
    try:
        return build(d, origin, base)
    except MachineError as e:
        e.span = _error_span(text, e.message, patterns) or e.span
        raise e.located(where, text) from None


def load_machine(name_or_path: str | Path) -> Machine:
    """A preset by name (``sn40l``, ``rdu-mini``) or a TOML file of the same form.

    Errors in a file are located there (``file.toml:LINE:COL``) at the field they name."""
    return load_description(name_or_path, "machine", presets(), ("machines",),
                            lambda d, origin, _: machine_from_dict(d, origin),
                            FIELD_MESSAGES + ((r"(clock_ghz) must be", None, 1),))
