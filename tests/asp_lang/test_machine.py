"""Specification of machine descriptions (asp_lang/machine.py, asp_lang/machines/*.toml).

Presets load and give the published/derived figures; a user's TOML file of the same form
loads to the same machine; every malformed file is a MachineError that names the field and
is located in the file (``file.toml:LINE:COL``).
"""

from __future__ import annotations

import math
import pickle
import re
import tomllib
from dataclasses import fields
from importlib import resources
from pathlib import Path

import pytest

import asp_lang
from asp_lang.errors import MachineError
from asp_lang.machine import Machine, load_machine, machine_from_dict, presets

SECTIONS = ("pcu", "pmu", "agcu", "hbm", "ddr", "network", "reconfig")


def preset_text(name: str) -> str:
    return resources.files("asp_lang").joinpath("machines").joinpath(f"{name}.toml").read_text()


def preset_dict(name: str) -> dict:
    return tomllib.loads(preset_text(name))


def write(tmp_path: Path, text: str, name: str = "m.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def edit(text: str, section: str | None, key: str, new_line: str | None) -> str:
    """Replace (or delete, new_line=None) the line ``key = ...`` of ``[section]``."""
    out, cur, done = [], None, False
    for line in text.splitlines():
        head = re.match(r"\s*\[([\w-]+)\]", line)
        if head:
            cur = head.group(1)
        elif cur == section and re.match(rf"\s*{key}\s*=", line) and not done:
            done = True
            if new_line is not None:
                out.append(new_line)
            continue
        out.append(line)
    assert done, (section, key)
    return "\n".join(out) + "\n"


def line_of(text: str, pattern: str) -> int:
    for i, line in enumerate(text.splitlines(), 1):
        if re.match(pattern, line):
            return i
    raise AssertionError(pattern)


def field_line(text: str, section: str | None, key: str) -> int:
    cur = None
    for i, line in enumerate(text.splitlines(), 1):
        head = re.match(r"\s*\[([\w-]+)\]", line)
        if head:
            cur = head.group(1)
        elif cur == section and re.match(rf"\s*{key}\s*=", line):
            return i
    raise AssertionError((section, key))


def machine_error(path_or_name) -> MachineError:
    with pytest.raises(MachineError) as ei:
        load_machine(path_or_name)
    return ei.value


# ------------------------------------------------------------------ presets

def test_presets_are_listed():
    assert {"rdu-mini", "sn40l"} <= set(presets())
    assert presets() == sorted(presets())


@pytest.mark.parametrize("name", ["rdu-mini", "sn40l"])
def test_preset_loads_with_every_field_typed(name):
    m = load_machine(name)
    assert isinstance(m, Machine)
    assert m.name == name
    assert m.description
    for sec in SECTIONS:
        part = getattr(m, sec)
        for f in fields(part):
            v = getattr(part, f.name)
            assert isinstance(v, (int, float)) and not isinstance(v, bool)
            if f.type == "int":
                assert isinstance(v, int), (sec, f.name)
            assert v > 0 or (f.name == "latency_ns" and v == 0), (sec, f.name)
    # loading twice gives equal (frozen, hashable) machines
    assert load_machine(name) == m
    assert hash(load_machine(name)) == hash(m)


def test_sn40l_derived_figures():
    m = load_machine("sn40l")
    assert m.clock_ghz == pytest.approx(1.6)
    assert m.pcu.count == 1040 and m.pmu.count == 1040
    # 1040 PCUs x 32 lanes x 6 stages x 2 flop x 1.6 GHz = 638.98 TFLOPS bf16
    assert m.mm_flops_per_cycle("bf16") == 384
    assert m.peak_tflops("bf16") == pytest.approx(638, rel=0.01)
    assert m.peak_tflops("bf16") == pytest.approx(1040 * 384 * 1.6 / 1e3)
    assert m.peak_tflops("f32") == pytest.approx(m.peak_tflops("bf16") * 0.25)
    # HBM 1800 GB/s at 1.6 GHz = 1125 bytes per cycle; DDR 200 GB/s = 125
    assert m.bytes_per_cycle("hbm") == pytest.approx(1125)
    assert m.bytes_per_cycle("ddr") == pytest.approx(125)
    assert m.latency_cycles("hbm") == pytest.approx(400 * 1.6)
    assert m.latency_cycles("ddr") == pytest.approx(800 * 1.6)
    # 1040 PMUs x 512 KiB = 520 MiB of SRAM
    assert m.pmu_bytes == 512 * 1024
    assert m.sram_bytes == 520 * 2**20
    assert m.simd_ops_per_cycle == 32 * 6
    assert m.tail_ops_per_cycle == 32
    s = m.summary()
    assert s["name"] == "sn40l" and s["pcus"] == 1040 and s["pmus"] == 1040
    assert s["sram_mib"] == pytest.approx(520)
    assert s["peak_bf16_tflops"] == pytest.approx(639.0, abs=0.1)
    assert s["hbm_gbs"] == 1800 and s["ddr_gbs"] == 200


def test_rdu_mini_derived_figures():
    m = load_machine("rdu-mini")
    assert m.pcu.count == 64 and m.pmu.count == 64 and m.agcu.count == 8
    assert m.bytes_per_cycle("hbm") == pytest.approx(100)
    assert m.bytes_per_cycle("ddr") == pytest.approx(25)
    assert m.sram_bytes == 4 * 2**20
    assert m.mm_flops_per_cycle("f32") == pytest.approx(2 * 16 * 6 * 0.25)
    assert m.mm_flops_per_cycle("i32") == m.mm_flops_per_cycle("f32")
    assert m.mm_flops_per_cycle("bf16") == m.mm_flops_per_cycle("f16") == 2 * 16 * 6
    assert m.reconfig.cycles == 4000


def test_ddr_is_slower_and_bigger_than_hbm_in_presets():
    for name in presets():
        m = load_machine(name)
        assert m.bytes_per_cycle("ddr") < m.bytes_per_cycle("hbm")
        assert m.ddr.capacity_gib > m.hbm.capacity_gib
        assert m.mem("hbm") is m.hbm and m.mem("ddr") is m.ddr


# ------------------------------------------------------------------ user files

@pytest.mark.parametrize("name", ["rdu-mini", "sn40l"])
def test_user_file_with_preset_content_is_the_same_machine(tmp_path, name):
    p = write(tmp_path, preset_text(name))
    assert load_machine(p) == load_machine(name)
    assert load_machine(str(p)) == load_machine(name)
    assert machine_from_dict(preset_dict(name)) == load_machine(name)


def test_user_machine_is_used_by_compile(tmp_path):
    text = edit(preset_text("rdu-mini"), "hbm", "bandwidth_gbs", "bandwidth_gbs = 50")
    p = write(tmp_path, text.replace('name = "rdu-mini"', 'name = "half-hbm"'))
    ex = Path(__file__).resolve().parents[2] / "docs" / "examples" / "vector_add.asp"
    slow = asp_lang.profile(asp_lang.compile_file(ex, machine=str(p)))
    fast = asp_lang.profile(asp_lang.compile_file(ex, machine="rdu-mini"))
    assert slow.machine == "half-hbm"
    assert slow.cycles > fast.cycles
    assert slow.roofline_cycles == pytest.approx(2 * fast.roofline_cycles)
    # a Machine object is accepted as well
    assert asp_lang.profile(asp_lang.compile_file(ex, machine=load_machine(p))).cycles == slow.cycles


def test_description_is_optional_and_latency_may_be_zero(tmp_path):
    text = edit(preset_text("rdu-mini"), None, "description", None)
    text = edit(text, "hbm", "latency_ns", "latency_ns = 0")
    m = load_machine(write(tmp_path, text))
    assert m.description == ""
    assert m.hbm.latency_ns == 0


def test_unknown_preset_names_the_presets():
    e = machine_error("no-such-rdu")
    assert "no-such-rdu" in e.message
    for p in presets():
        assert p in e.message
    assert "<kernel>" not in e.render()


def test_missing_file_is_a_machine_error(tmp_path):
    e = machine_error(tmp_path / "absent.toml")
    assert "absent.toml" in e.message


ALL_FIELDS = [(sec, f.name) for sec, cls in
              (("pcu", "PCU"), ("pmu", "PMU"), ("agcu", "AGCU"), ("hbm", "Memory"), ("ddr", "Memory"),
               ("network", "Network"), ("reconfig", "Reconfig"))
              for f in fields(getattr(__import__("asp_lang.machine", fromlist=[cls]), cls))]


def _check_located(e: MachineError, path: Path, text: str, line: int, token: str):
    """render() is ``path:LINE:COL: error:`` with the offending line and a caret under ``token``."""
    src_line = text.splitlines()[line - 1]
    col = src_line.index(token) + 1
    assert (e.span.line, e.span.col) == (line, col)
    out = e.render().splitlines()
    assert out[0].startswith(f"{path}:{line}:{col}: error: ")
    assert out[0].endswith("[MachineError]")
    assert out[1] == src_line
    assert out[2].startswith(" " * (col - 1) + "^")


OPTIONAL_FIELDS = [("network", "send_latency_cycles")]  # files written before it existed still load
REQUIRED_FIELDS = [f for f in ALL_FIELDS if f not in OPTIONAL_FIELDS]


def test_the_optional_fields_are_the_ones_with_defaults():
    from dataclasses import MISSING
    import asp_lang.machine as mm
    classes = {"pcu": mm.PCU, "pmu": mm.PMU, "agcu": mm.AGCU, "hbm": mm.Memory, "ddr": mm.Memory,
               "network": mm.Network, "reconfig": mm.Reconfig}
    with_default = [(sec, f.name) for sec, cls in classes.items() for f in fields(cls) if f.default is not MISSING]
    assert with_default == OPTIONAL_FIELDS


def test_a_file_without_send_latency_loads_with_one_hop(tmp_path):
    text = edit(preset_text("rdu-mini"), "network", "send_latency_cycles", None)
    assert "send_latency_cycles" not in text
    m = load_machine(write(tmp_path, text))
    assert m.network.send_latency_cycles == 1
    assert m == load_machine("rdu-mini")


def test_send_latency_may_be_zero(tmp_path):
    text = edit(preset_text("rdu-mini"), "network", "send_latency_cycles", "send_latency_cycles = 0")
    assert load_machine(write(tmp_path, text)).network.send_latency_cycles == 0


@pytest.mark.parametrize("section,key", REQUIRED_FIELDS)
def test_missing_field_is_named_and_points_at_its_section(tmp_path, section, key):
    text = edit(preset_text("rdu-mini"), section, key, None)
    p = write(tmp_path, text)
    e = machine_error(p)
    assert f"[{section}]" in e.message and f"'{key}'" in e.message and "missing" in e.message
    _check_located(e, p, text, line_of(text, rf"\[{section}\]"), "[")


@pytest.mark.parametrize("section,key", ALL_FIELDS)
def test_negative_value_is_named(tmp_path, section, key):
    text = edit(preset_text("rdu-mini"), section, key, f"{key} = -3")
    p = write(tmp_path, text)
    e = machine_error(p)
    assert key in e.message and "positive" in e.message
    _check_located(e, p, text, field_line(text, section, key), key)


@pytest.mark.parametrize("section,key", [("pcu", "count"), ("pmu", "sram_kib"), ("hbm", "bandwidth_gbs"),
                                         ("reconfig", "cycles"), ("ddr", "latency_ns")])
@pytest.mark.parametrize("value", ['"64"', "true", "[1, 2]", "{ a = 1 }"])
def test_wrong_type_is_named(tmp_path, section, key, value):
    text = edit(preset_text("rdu-mini"), section, key, f"{key} = {value}")
    p = write(tmp_path, text)
    e = machine_error(p)
    assert f"[{section}] {key} must be" in e.message
    _check_located(e, p, text, field_line(text, section, key), key)


@pytest.mark.parametrize("section,key", [("pcu", "count"), ("pcu", "lanes"), ("agcu", "count"),
                                         ("network", "fifo_depth"), ("reconfig", "cycles"),
                                         ("hbm", "max_outstanding")])
def test_float_for_an_integer_field_is_named(tmp_path, section, key):
    text = edit(preset_text("rdu-mini"), section, key, f"{key} = 2.5")
    p = write(tmp_path, text)
    e = machine_error(p)
    assert key in e.message and "integer" in e.message


def test_integer_for_a_float_field_is_accepted(tmp_path):
    text = edit(preset_text("rdu-mini"), "pcu", "f32_matmul_rate", "f32_matmul_rate = 1")
    assert load_machine(write(tmp_path, text)).pcu.f32_matmul_rate == 1


@pytest.mark.parametrize("section", ["pcu", "pmu", "hbm", "reconfig"])
def test_unknown_field_is_named(tmp_path, section):
    text = preset_text("rdu-mini").replace(f"[{section}]\n", f"[{section}]\ncolour = 3\n")
    p = write(tmp_path, text)
    e = machine_error(p)
    assert "colour" in e.message and f"[{section}]" in e.message and "unknown" in e.message
    _check_located(e, p, text, line_of(text, r"colour = 3"), "colour")


def test_unknown_top_level_key_is_named(tmp_path):
    text = "vendor = 'acme'\n" + preset_text("rdu-mini")
    p = write(tmp_path, text)
    e = machine_error(p)
    assert "vendor" in e.message
    _check_located(e, p, text, 1, "vendor")


@pytest.mark.parametrize("section", SECTIONS)
def test_missing_section_is_named(tmp_path, section):
    d = preset_dict("rdu-mini")
    del d[section]
    with pytest.raises(MachineError, match=rf"missing '{section}'"):
        machine_from_dict(d)


@pytest.mark.parametrize("section", ["pcu", "hbm"])
def test_section_that_is_not_a_table_is_named(tmp_path, section):
    d = preset_dict("rdu-mini")
    d[section] = 3
    with pytest.raises(MachineError, match=rf"\[{section}\] must be a table"):
        machine_from_dict(d)


@pytest.mark.parametrize("value", ["0", "-1.6", '"fast"', "false"])
def test_bad_clock_is_named(tmp_path, value):
    text = edit(preset_text("rdu-mini"), None, "clock_ghz", f"clock_ghz = {value}")
    p = write(tmp_path, text)
    e = machine_error(p)
    assert "clock_ghz" in e.message
    _check_located(e, p, text, line_of(text, r"clock_ghz = "), "clock_ghz")


def test_invalid_toml_is_located(tmp_path):
    text = edit(preset_text("rdu-mini"), "pmu", "count", "count = = 64")
    p = write(tmp_path, text)
    e = machine_error(p)
    assert "not valid TOML" in e.message
    assert e.filename == str(p)
    assert e.span.line == line_of(text, r"count = = 64")
    assert e.render().startswith(f"{p}:{e.span.line}:")


def test_empty_file_names_the_first_missing_key(tmp_path):
    e = machine_error(write(tmp_path, ""))
    assert "missing 'name'" in e.message


def test_machine_errors_pickle_with_their_location(tmp_path):
    text = edit(preset_text("rdu-mini"), "pmu", "sram_kib", "sram_kib = -64")
    e = machine_error(write(tmp_path, text))
    e2 = pickle.loads(pickle.dumps(e))
    assert type(e2) is MachineError
    assert (e2.message, e2.span, e2.filename, e2.source) == (e.message, e.span, e.filename, e.source)
    assert e2.render() == e.render()


def test_derived_figures_follow_the_fields(tmp_path):
    """Doubling the clock halves bytes per cycle and doubles peak; lanes scale flops."""
    d = preset_dict("rdu-mini")
    base = machine_from_dict(d)
    d2 = dict(d, clock_ghz=2 * d["clock_ghz"])
    fast = machine_from_dict(d2)
    assert fast.bytes_per_cycle("hbm") == pytest.approx(base.bytes_per_cycle("hbm") / 2)
    assert fast.latency_cycles("hbm") == pytest.approx(2 * base.latency_cycles("hbm"))
    assert fast.peak_tflops() == pytest.approx(2 * base.peak_tflops())
    d3 = dict(d, pcu=dict(d["pcu"], lanes=2 * d["pcu"]["lanes"]))
    assert machine_from_dict(d3).mm_flops_per_cycle("bf16") == 2 * base.mm_flops_per_cycle("bf16")
    assert math.isclose(machine_from_dict(d3).peak_tflops(), 2 * base.peak_tflops())
