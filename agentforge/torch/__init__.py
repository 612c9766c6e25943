"""The PyTorch bridge: a kernel library as custom ops, a torch.compile backend, offload reports.

``import torch`` inside this package gets the real torch (absolute imports only; no module of
this package is named ``torch``). Documented in docs/pytorch.md.
"""

from agentforge.torch.ops import (FALLBACKS, ModelCaptureError, NoDerivativeError, OpFamily, TorchBridgeError,
                                  TorchLibrary, UnverifiedProblemError, load_library)
from agentforge.torch._build import build_library

__all__ = ["load_library", "TorchLibrary", "OpFamily", "TorchBridgeError", "UnverifiedProblemError",
           "NoDerivativeError", "ModelCaptureError", "FALLBACKS", "report", "build_library"]


def report(model, inputs, **options):  # noqa: ANN001, ANN201 - thin lazy wrapper, documented in report.py
    """See :func:`agentforge.torch.report.report` (imported lazily: it pulls in the baseline lowering)."""
    from agentforge.torch.report import report as _report

    return _report(model, inputs, **options)
