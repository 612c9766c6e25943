"""docs/asp.md and docs/machine.md stay true to asp_lang.

* every stream operator, tile builtin and error kind is documented (as a heading or a code item);
* every ```asp block in docs/asp.md is a complete kernel that parses, checks, runs on random
  inputs and profiles;
* every ```asp-error block fails with the kind named on its first line (``# error: Kind``), and
  the ```text block right after it is exactly the rendered message;
* kernels copied from docs/examples into the reference are identical to the files;
* docs/machine.md names every machine field, and its TOML blocks are valid machines.

Header lines of an asp-error block (comments before ``kernel``) may say how it is run:
``# machine: NAME`` (default sn40l), ``# sizes: N=4,M=8``, ``# routing: counts=1:2``,
``# inputs: x=32x4`` (that parameter is given as zeros of that shape instead of random data).
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path

import numpy as np
import pytest

import asp_lang
from asp_lang.machine import _SECTIONS, machine_from_dict
from asp_lang.ops import OPS
from asp_lang.tile_builtins import BUILTINS
from asp_lang.timing import EmulatorError

ROOT = Path(__file__).resolve().parents[2]
ASP_MD = ROOT / "docs" / "asp.md"
MACHINE_MD = ROOT / "docs" / "machine.md"
EXAMPLES = ROOT / "docs" / "examples"
FILENAME = "k.asp"

_FENCE = re.compile(r"^```([A-Za-z0-9_-]*)\s*$")


@dataclasses.dataclass
class Block:
    tag: str
    text: str
    line: int  # 1-based line of the opening fence

    @property
    def id(self) -> str:
        m = re.search(r"^\s*kernel\s+(\w+)", self.text, re.M)
        return f"L{self.line}-{m.group(1) if m else self.tag}"


def fenced_blocks(path: Path) -> list[Block]:
    blocks: list[Block] = []
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines) and lines[i].rstrip() != "```":
            body.append(lines[i])
            i += 1
        assert i < len(lines), f"{path.name}:{start + 1}: unclosed code block"
        blocks.append(Block(m.group(1), "\n".join(body) + ("\n" if body else ""), start + 1))
        i += 1
    return blocks


def header(block: Block) -> dict[str, str]:
    """The ``# key: value`` comment lines before ``kernel``."""
    out: dict[str, str] = {}
    for line in block.text.splitlines():
        s = line.strip()
        if not s:
            continue
        if not s.startswith("#"):
            break
        m = re.match(r"#\s*([a-z]+)\s*:\s*(.*)$", s)
        if m:
            out[m.group(1)] = m.group(2).strip()
    return out


def _sizes(text: str | None) -> dict[str, int] | None:
    if not text:
        return None
    return {k.strip(): int(v) for k, v in (p.split("=") for p in text.split(","))}


def _routing(text: str | None) -> dict | None:
    if not text or text == "uniform":
        return None
    assert text.startswith("counts=")
    return {"counts": [int(c) for c in text[len("counts="):].split(":")]}


def execute(block: Block):
    """Compile, run (random inputs, seed 0) and profile a block as its header says."""
    h = header(block)
    prog = asp_lang.compile(block.text, machine=h.get("machine", "sn40l"), sizes=_sizes(h.get("sizes")),
                            filename=FILENAME, routing=_routing(h.get("routing")))
    inputs = asp_lang.random_inputs(prog, seed=0)
    if "inputs" in h:
        for item in h["inputs"].split(","):
            name, shape = item.split("=")
            dtype = np.int32 if prog.tensors[name.strip()].dtype == "i32" else np.float32
            inputs[name.strip()] = np.zeros(tuple(int(d) for d in shape.split("x")), dtype)
    outs = asp_lang.run(prog, inputs)
    rep = asp_lang.profile(prog)
    return prog, outs, rep


ALL = fenced_blocks(ASP_MD)
ASP_BLOCKS = [b for b in ALL if b.tag == "asp"]
ERROR_BLOCKS = [(i, b) for i, b in enumerate(ALL) if b.tag == "asp-error"]
DOC_TEXT = ASP_MD.read_text()


def _documented(name: str) -> bool:
    """``name`` is a heading word or a code item (`name` or `name(...)`) in docs/asp.md."""
    if re.search(r"`" + re.escape(name) + r"(\(|`)", DOC_TEXT):
        return True
    return any(re.search(r"\b" + re.escape(name) + r"\b", line)
               for line in DOC_TEXT.splitlines() if line.startswith("#"))


# ---------------------------------------------------------------- coverage

@pytest.mark.parametrize("name", sorted(OPS))
def test_operator_is_documented(name):
    assert _documented(name), f"stream operator {name!r} is not documented in docs/asp.md"
    assert re.search(rf"^#+ .*`{name}`", DOC_TEXT, re.M), f"operator {name!r} has no heading"


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_builtin_is_documented(name):
    assert _documented(name), f"tile builtin {name!r} is not documented in docs/asp.md"


@pytest.mark.parametrize("kind", sorted({e.kind for e in asp_lang.ERROR_KINDS} | {EmulatorError.kind}))
def test_error_kind_is_documented(kind):
    assert re.search(rf"^#+ .*`{kind}`", DOC_TEXT, re.M), f"error kind {kind!r} has no heading"


def test_every_error_kind_with_an_example_has_one():
    shown = {header(b).get("error") for _, b in ERROR_BLOCKS}
    assert {e.kind for e in asp_lang.ERROR_KINDS} <= shown


def test_there_are_examples():
    assert len(ASP_BLOCKS) >= 30 and len(ERROR_BLOCKS) >= 12


# ---------------------------------------------------------------- kernels

@pytest.mark.parametrize("block", ASP_BLOCKS, ids=lambda b: b.id)
def test_asp_block_parses_checks_runs_and_profiles(block):
    first = next(ln.strip() for ln in block.text.splitlines() if ln.strip() and not ln.strip().startswith("#"))
    assert first.startswith("kernel"), (f"docs/asp.md:{block.line}: an ```asp block must be a complete "
                                        "kernel (use ```text for fragments)")
    prog, outs, rep = execute(block)
    assert set(outs) == set(prog.results)
    assert rep.cycles >= rep.roofline_cycles > 0


@pytest.mark.parametrize("pos,block", ERROR_BLOCKS, ids=lambda x: x.id if isinstance(x, Block) else str(x))
def test_asp_error_block_fails_as_documented(pos, block):
    kind = header(block).get("error")
    assert kind, f"docs/asp.md:{block.line}: an ```asp-error block starts with '# error: Kind'"
    with pytest.raises(asp_lang.AspError) as info:
        execute(block)
    err = info.value
    assert err.kind == kind, f"docs/asp.md:{block.line}: expected {kind}, got {err.kind}: {err.message}"
    nxt = ALL[pos + 1] if pos + 1 < len(ALL) else None
    assert nxt is not None and nxt.tag == "text", \
        f"docs/asp.md:{block.line}: an ```asp-error block is followed by a ```text block with its message"
    assert nxt.text.rstrip("\n") == err.render(), (
        f"docs/asp.md:{nxt.line}: the documented message is out of date; it should read:\n{err.render()}")


def test_copied_examples_match_their_files():
    """A doc kernel with the name of a docs/examples file is a verbatim copy of it."""
    files = {p.stem: p.read_text() for p in EXAMPLES.glob("*.asp")}
    copied = 0
    for b in ASP_BLOCKS:
        m = re.search(r"^kernel\s+(\w+)", b.text, re.M)
        if m and m.group(1) in files:
            body = files[m.group(1)]
            body = body[body.index("kernel "):]  # the file's leading comment is not copied
            assert b.text == body, f"docs/asp.md:{b.line}: differs from docs/examples/{m.group(1)}.asp"
            copied += 1
    assert copied >= 3


def test_referenced_example_files_exist():
    for name in set(re.findall(r"docs/examples/(\w+\.asp)", DOC_TEXT)):
        assert (EXAMPLES / name).is_file(), f"docs/asp.md mentions missing docs/examples/{name}"


# ---------------------------------------------------------------- machine.md

def _machine_fields() -> dict[str, list[str]]:
    """Top-level keys, then each [section]'s fields, as machine_from_dict reads them."""
    out = {"": ["name", "description", "clock_ghz"]}
    for section, cls in _SECTIONS.items():
        out[section] = [f.name for f in dataclasses.fields(cls)]
    return out


def test_machine_md_names_every_field():
    text = MACHINE_MD.read_text()
    for section, names in _machine_fields().items():
        if section:
            assert f"[{section}]" in text, f"docs/machine.md does not describe section [{section}]"
        for n in names:
            assert f"`{n}`" in text, f"docs/machine.md does not describe field {section}.{n}"


def test_machine_md_toml_blocks_are_valid_machines():
    blocks = [b for b in fenced_blocks(MACHINE_MD) if b.tag == "toml"]
    assert blocks
    full = 0
    for b in blocks:
        d = tomllib.loads(b.text)
        if "name" in d:
            machine_from_dict(d, f"docs/machine.md:{b.line}")
            full += 1
    assert full >= 1


@pytest.mark.parametrize("preset", asp_lang.presets())
def test_machine_md_shows_presets_verbatim(preset):
    from importlib import resources
    src = resources.files("asp_lang").joinpath("machines").joinpath(f"{preset}.toml").read_text()
    assert src.strip() in MACHINE_MD.read_text(), f"docs/machine.md does not reproduce {preset}.toml"
