"""The bridge between PyTorch tensors, the IR's dtype strings and ASP's numpy storage.

Every place that hands a tensor to the emulator or a result back to PyTorch (the op-by-op
chain, the verifier's kernel candidate, the PyTorch ops, the solution object) converts the
same way; the conversion lives here once so that they cannot drift apart:

- :func:`dtype_str` / :func:`torch_dtype`: torch dtypes <-> the IR's short names ("bf16").
- :func:`to_numpy` / :func:`to_torch`: a tensor in ASP storage (floats as float32, in which
  bf16/f16 are exact; integers as int64) and back at the IR dtype.
- :func:`to_asp`: an operand as an ASP program takes it (64-bit integers as i32, docs/asp.md,
  in the program's parameter shape); :func:`program_feed` / :func:`program_results` do a
  whole bound program's parameters and results.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["dtype_str", "torch_dtype", "to_numpy", "to_torch", "to_asp", "program_feed", "program_results"]

_DTYPE_NAMES: dict[torch.dtype, str] = {
    torch.float32: "f32",
    torch.bfloat16: "bf16",
    torch.float16: "f16",
    torch.float64: "f64",
    torch.int64: "i64",
    torch.int32: "i32",
    torch.int16: "i16",
    torch.int8: "i8",
    torch.uint8: "u8",
    torch.bool: "bool",
    torch.complex64: "c64",
    torch.complex128: "c128",
}
_DTYPES_BY_NAME: dict[str, torch.dtype] = {v: k for k, v in _DTYPE_NAMES.items()}


def dtype_str(dtype: torch.dtype) -> str:
    """Short dtype name used in the IR ("f32", "bf16", ..., "bool"); torch's name otherwise."""
    return _DTYPE_NAMES.get(dtype, str(dtype).removeprefix("torch."))


def torch_dtype(name: str) -> torch.dtype:
    """Inverse of :func:`dtype_str`."""
    if name in _DTYPES_BY_NAME:
        return _DTYPES_BY_NAME[name]
    value = getattr(torch, name, None)
    if isinstance(value, torch.dtype):
        return value
    raise ValueError(f"unknown dtype string {name!r}")



def to_numpy(t: torch.Tensor) -> np.ndarray:
    """A tensor in ASP storage: floats as float32 (bf16/f16 exactly representable), ints as int64."""
    t = t.detach()
    if t.dtype in (torch.bfloat16, torch.float16, torch.float64):
        t = t.float()
    return t.contiguous().numpy()


def to_torch(a: np.ndarray, dtype: str) -> torch.Tensor:
    """An ASP result (or any array) as a tensor of the IR dtype ``dtype`` (a private copy if ``a`` is read-only)."""
    a = np.ascontiguousarray(a)
    if not a.flags.writeable:
        a = a.copy()
    return torch.from_numpy(a).to(torch_dtype(dtype))


def to_asp(value: torch.Tensor | np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """``value`` as an ASP program parameter of ``shape``: ASP storage, 64-bit integers as i32.

    The int64 -> int32 step is lossless only for values that fit; callers that take user data
    (the PyTorch ops) check the range first."""
    a = to_numpy(value) if isinstance(value, torch.Tensor) else value
    if a.dtype == np.int64:
        a = a.astype(np.int32)
    return a.reshape(shape)


def program_feed(prog: Any, values: Iterable[torch.Tensor]) -> dict[str, np.ndarray]:
    """The feed of a compiled ASP program: ``values`` in the order of ``prog.params``, each in the
    shape the program declares for it."""
    return {pname: to_asp(t, prog.tensors[pname].shape) for pname, t in zip(prog.params, values)}


def program_results(prog: Any, outs: Mapping[str, np.ndarray], specs: Iterable[Any]) -> list[torch.Tensor]:
    """The results of a run of ``prog`` as tensors, one per spec of ``specs`` (``.dtype``, ``.shape``),
    in the order of ``prog.results``."""
    return [to_torch(outs[r], s.dtype).reshape(s.shape) for r, s in zip(prog.results, specs)]
