"""The author's kernel templates, one module each, registered in :data:`TEMPLATES`.

Every template is a :class:`Template` (its name, the parameters it takes with the values the
tuner tries, its minimum tries, and how it builds the kernel of one region); the partitioner
proposes regions of these templates, :func:`agentforge.author.realize.realize` builds them,
:mod:`agentforge.author.tune` searches their grids and :func:`agentforge.author.plan.validate_plan`
checks a plan against them. A new template is a module with a ``TEMPLATE`` added here.
"""

from __future__ import annotations

from . import attention, decoder, matmul, moe, row, single
from .attention import ATTN_GRID, ATTN_MIN_TRIES, AttentionKernel
from .base import KernelFn, RegionCode, Template
from .decoder import DECODER_GRID, DECODER_MIN_TRIES, DecoderKernel
from .matmul import MM_GRID, MM_MIN_TRIES, MatmulKernel
from .moe import MOE_GRID, MOE_MIN_TRIES, MoeKernel
from .row import ROW_GRID, RowKernel
from .single import SINGLE_GRID

#: name -> template, in the order the planner's catalog lists them
TEMPLATES: dict[str, Template] = {t.name: t for t in (row.TEMPLATE, matmul.TEMPLATE, attention.TEMPLATE,
                                                      moe.TEMPLATE, moe.EXPERTS_TEMPLATE, decoder.TEMPLATE,
                                                      single.TEMPLATE)}
#: name -> the parameter grid the tuner searches
GRIDS: dict[str, dict[str, tuple]] = {name: t.grid for name, t in TEMPLATES.items()}
#: name -> timing evaluations spent on one region at least (templates that ask for more than their share)
MIN_TRIES: dict[str, int] = {name: t.min_tries for name, t in TEMPLATES.items() if t.min_tries}
#: templates searched exhaustively
WHOLE_GRID: tuple[str, ...] = tuple(name for name, t in TEMPLATES.items() if t.whole_grid)

__all__ = ["TEMPLATES", "GRIDS", "MIN_TRIES", "WHOLE_GRID", "Template", "KernelFn", "RegionCode", "RowKernel",
           "MatmulKernel", "AttentionKernel", "MoeKernel", "DecoderKernel", "ROW_GRID", "MM_GRID", "MM_MIN_TRIES",
           "ATTN_GRID", "ATTN_MIN_TRIES", "MOE_GRID", "MOE_MIN_TRIES", "DECODER_GRID", "DECODER_MIN_TRIES",
           "SINGLE_GRID"]
