"""The offline author: fuses a task's ATen graph into few streaming ASP kernels.

It is a small compiler, not a lookup table; each step is a module of this package:

1. **Regions** (:mod:`.partition`): walking the graph in order, ops join the open region while
   a template can stream them together: *row* regions (elementwise ops, reductions, softmax,
   layer norm, cumsum, slices and concatenation along the last dimension, over one space of
   rows: one map over row tiles whose tile function holds the whole region), *matmul* regions
   (mm / addmm, their transposed weight, and an elementwise epilogue on the output tiles),
   *attention* regions (Q K^T, a scale, a constant mask, softmax and the product with V, found
   whole before the greedy walk: one flash-attention kernel whose online-softmax ``accum``
   streams K/V blocks held on chip, so the scores never reach HBM) and *moe* regions (a
   dense-masked mixture of experts: every expert's MLP on every token, weighted by a gate matrix
   with at most k non-zeros per token and summed over experts, also found whole: one routed
   kernel, ``selector``/``partition``/``merge``, each token through its k experts only). A row
   region may end in a *split reduction* (a reduction across its rows: each row tile reduces to
   a partial in the parallel map, a small ``accum`` combines them). Anything else is a region of
   one op lowered as the baseline does.
2. **Plan** (:mod:`.plan`): the regions (by semantic node index, so a plan applies at every size
   of the task and to every task with the same signature) and each region's parameters (tile
   sizes, parallelism). JSON-serialisable: it is what the plan cache stores.
   :func:`validate_plan` checks a plan from elsewhere against the templates and a graph.
3. **Realize** (:mod:`.realize`): a plan and a captured graph give a chain of ASP kernels (one
   per region, each built by its template), intermediates between regions through HBM;
   verification runs and times that chain.
4. **Search** (:mod:`.tune`): each region's parameters are searched against the timing model at
   the task's own sizes (timing-only, no data).

The templates (:mod:`.templates`: ``row``, ``matmul``, ``attention``, ``moe``, ``single``) are one
module each behind one interface (:class:`~.templates.Template`), registered in
:data:`TEMPLATES`; :mod:`.graph` is what all of them read from a captured graph.

The package attributes ``partition``, ``realize`` and ``tune`` are the functions (as before the
package existed); the modules of those names are reached with ``from agentforge.author.partition
import ...`` (``import agentforge.author.partition as m`` would give the function).
"""

from __future__ import annotations

from ..lowering import UnsupportedOpError
from .graph import is_alias, row_kind, row_period, row_view, semantic_nodes, total_kind
from .plan import PLAN_VERSION, Plan, Region, validate_plan
from .templates import (ATTN_GRID, GRIDS, MIN_TRIES, MM_GRID, MM_MIN_TRIES, MOE_GRID, ROW_GRID, SINGLE_GRID,
                        TEMPLATES, WHOLE_GRID, AttentionKernel, MatmulKernel, MoeKernel, RowKernel, Template)
from .partition import attention_regions, baseline_plan, common_partition, moe_regions, partition
from .realize import GraphIndex, graph_index, realize, region_kernel
from .tune import Tuned, author_plan, best_params, mm_check_elements, tune

__all__ = ["Plan", "Region", "PLAN_VERSION", "validate_plan", "partition", "common_partition", "baseline_plan",
           "attention_regions", "moe_regions", "realize", "graph_index", "GraphIndex", "region_kernel", "tune",
           "author_plan", "best_params", "mm_check_elements", "Tuned", "semantic_nodes", "is_alias", "row_kind",
           "row_period", "row_view", "total_kind", "TEMPLATES", "Template", "GRIDS", "MIN_TRIES", "WHOLE_GRID",
           "ROW_GRID", "MM_GRID", "MM_MIN_TRIES", "ATTN_GRID", "MOE_GRID", "SINGLE_GRID", "RowKernel",
           "MatmulKernel", "AttentionKernel", "MoeKernel", "UnsupportedOpError"]
