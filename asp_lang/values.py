"""Run-time stream values for the interpreter.

A stream without dynamic dimensions is one numpy array of shape ``dims + element shape``
(a tuple of arrays for tuple elements), so operators work on whole streams at once; views
from ``repeat``/``streamify`` are zero-copy broadcasts. A stream with a dynamic dimension
(after ``partition``) is stored flat: ``data`` holds all elements along the dynamic axis,
``lengths`` (shaped like the static dimensions before it) says how many belong to each.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass
class SVal:
    data: object                     # np.ndarray or tuple of them (tuple elements)
    lengths: np.ndarray | None = None

    def map(self, f: Callable[[np.ndarray], np.ndarray]) -> "SVal":
        return SVal(tmap(f, self.data), self.lengths)


def tmap(f, data):
    if isinstance(data, tuple):
        return tuple(tmap(f, d) for d in data)
    return f(data)


def nbytes(data) -> int:
    if isinstance(data, tuple):
        return sum(nbytes(d) for d in data)
    return int(np.asarray(data).size) * np.asarray(data).itemsize


def leaves(data) -> list[np.ndarray]:
    if isinstance(data, tuple):
        return [x for d in data for x in leaves(d)]
    return [data]
