"""Element and stream types, dtypes and their rounding.

bf16 and f16 values are held in float32 arrays and rounded to their format after every
operation (round to nearest even), never silently computed in wider precision.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

FLOAT_DTYPES = ("f32", "bf16", "f16")
DTYPES = ("f32", "bf16", "f16", "i32", "bool")
WEAK_INT = "int"      # an integer literal or size; takes the dtype of what it meets
WEAK_FLOAT = "float"  # a float literal

ITEMSIZE = {"f32": 4, "bf16": 2, "f16": 2, "i32": 4, "bool": 1, WEAK_INT: 4, WEAK_FLOAT: 4}
NUMPY_STORAGE = {"f32": np.float32, "bf16": np.float32, "f16": np.float32, "i32": np.int32,
                 "bool": np.bool_}


def is_float(dtype: str) -> bool:
    return dtype in FLOAT_DTYPES or dtype == WEAK_FLOAT


def is_weak(dtype: str) -> bool:
    return dtype in (WEAK_INT, WEAK_FLOAT)


def round_bf16(x: np.ndarray) -> np.ndarray:
    """Round float32 values to bfloat16 (nearest even), returned as float32."""
    a = np.ascontiguousarray(x, dtype=np.float32)
    bits = a.view(np.uint32)
    nan = np.isnan(a)
    lsb = (bits >> 16) & 1
    rounded = ((bits + np.uint32(0x7FFF) + lsb) & np.uint32(0xFFFF0000)).astype(np.uint32)
    out = rounded.view(np.float32)
    if nan.any():
        out = np.where(nan, np.float32(np.nan), out)
    return out.reshape(np.shape(x))  # ascontiguousarray turns a 0-d array into shape (1,)


def round_to(dtype: str, x):
    """Store ``x`` as ``dtype`` (float formats rounded, ints wrapped, bools as bool)."""
    if dtype == "f32":
        return np.asarray(x, dtype=np.float32)
    if dtype == "bf16":
        return round_bf16(np.asarray(x, dtype=np.float32))
    if dtype == "f16":
        with np.errstate(all="ignore"):
            return np.asarray(x, dtype=np.float32).astype(np.float16).astype(np.float32)
    if dtype == "i32":
        a = np.asarray(x)
        if a.dtype.kind == "f":
            with np.errstate(all="ignore"):
                # in float64: 2**31 - 1 is not a float32, so a float32 clip overflows the cast;
                # out-of-range values (and +-inf) saturate, NaN becomes 0
                a = np.asarray(a, dtype=np.float64)
                a = np.where(np.isnan(a), 0.0, np.trunc(a))
                a = np.clip(a, -2**31, 2**31 - 1)
        return a.astype(np.int32)
    if dtype == "bool":
        return np.asarray(x).astype(np.bool_)
    return x


# --- element types ---

@dataclass(frozen=True)
class TileT:
    """A dense tile: what one compute unit holds and works on."""
    dtype: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * ITEMSIZE[self.dtype]

    def __str__(self) -> str:
        return f"{self.dtype}[{', '.join(map(str, self.shape))}]"


@dataclass(frozen=True)
class SelT:
    """A selector: for each element, the k branches (of n) it is routed to."""
    n: int
    k: int

    @property
    def nbytes(self) -> int:
        return 4 * self.k

    def __str__(self) -> str:
        return f"sel[{self.n}, k={self.k}]"


@dataclass(frozen=True)
class BufT:
    """A read-only reference to an on-chip buffer holding a whole sub-stream."""
    dims: tuple[int, ...]
    elem: TileT

    @property
    def nbytes(self) -> int:
        return math.prod(self.dims) * self.elem.nbytes

    def __str__(self) -> str:
        return f"buf[{', '.join(map(str, self.dims))}] of {self.elem}"


@dataclass(frozen=True)
class TupT:
    items: tuple["Elem", ...]

    @property
    def nbytes(self) -> int:
        return sum(i.nbytes for i in self.items)

    def __str__(self) -> str:
        return "(" + ", ".join(map(str, self.items)) + ")"


Elem = TileT | SelT | BufT | TupT


@dataclass(frozen=True)
class Dyn:
    """A dimension whose length is known only at run time (after partition).

    ``assumed`` is the mean branch length the timing model uses (uniform routing by default,
    or counts given by the user); ``skew`` is the longest branch over the mean (1 when uniform):
    operators on a routed stream spread their replicas over the branches, so the busiest
    branch sets their pace.
    """
    label: str
    assumed: float
    skew: float = 1.0

    def __str__(self) -> str:
        return f"?{self.label}"


Dim = int | Dyn


@dataclass(frozen=True)
class StreamT:
    dims: tuple[Dim, ...]
    elem: Elem

    @property
    def rank(self) -> int:
        return len(self.dims)

    @property
    def count(self) -> float:
        """Number of elements (expected number where a dimension is dynamic)."""
        n = 1.0
        for d in self.dims:
            n *= d.assumed if isinstance(d, Dyn) else d
        return n

    @property
    def dynamic(self) -> bool:
        return any(isinstance(d, Dyn) for d in self.dims)

    def __str__(self) -> str:
        return f"stream[{', '.join(map(str, self.dims))}] of {self.elem}"


@dataclass(frozen=True)
class TensorT:
    """A kernel parameter or result living off chip."""
    name: str
    dtype: str
    shape: tuple[int, ...]
    tier: str

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * ITEMSIZE[self.dtype]

    def __str__(self) -> str:
        return f"{self.dtype}[{', '.join(map(str, self.shape))}] @{self.tier}"
