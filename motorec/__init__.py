"""motorec: kernel-accelerated MoToRec (sparse-regularized multimodal tokenization) for cold-start
recommendation.

Layers: :mod:`motorec.ops` (custom ops with reference paths and honest dispatch), :mod:`motorec.nn`
(drop-in modules), :mod:`motorec.models`, :mod:`motorec.data`, :mod:`motorec.train`, :mod:`motorec.eval`.
"""
__version__ = "0.1.0"

from motorec import (
    _ext,  # noqa: F401  (capability flags; loads motorec._C when built)
    models,  # noqa: F401  (registers each model's config section, so any Config reads them)
    ops,  # noqa: F401
)
from motorec._dispatch import BackendUnavailable
from motorec.graph import Graph

__all__ = ["Graph", "ops", "BackendUnavailable", "__version__"]
