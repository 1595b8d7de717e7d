"""motorec's public functional ops, each a ``torch.library`` custom op under ``motorec::``.

* :func:`residual_quantize` — fused nearest-codeword search over L residual levels.
* :func:`spmm` — CSR sparse x dense product.
* :func:`propagate` — multi-layer LightGCN readout (mean over layers).
* :func:`code_usage` — per-codeword mean soft assignment of residual quantization (the sparsity term), fused.
* :func:`rank_topk` — per-user top-k items (all, warm, cold) with exclusions, without the [B, I] scores.
* :func:`source_attention` — attention over M [N, d] sources (MoToRec's modality fusion), with no [M, N, d] temporaries.
* :func:`explain` — a table of every backend of an op and why it can or cannot serve here.
"""
from motorec._dispatch import BackendUnavailable, dispatcher, registered_ops
from motorec.ops.code_usage import code_usage
from motorec.ops.propagate import propagate
from motorec.ops.rank_topk import RankTopK, rank_topk
from motorec.ops.residual_quantize import RQOutput, residual_quantize
from motorec.ops.source_attention import source_attention
from motorec.ops.spmm import spmm

__all__ = ["residual_quantize", "RQOutput", "code_usage", "spmm", "propagate", "rank_topk", "RankTopK",
           "source_attention", "explain",
           "select_backend", "BackendUnavailable"]


def explain(op_name: str | None = None, **inputs) -> str:
    """Readable table of every backend (torch, cpu, triton, cuda) of ``op_name`` and why each can or cannot
    serve on this machine. ``op_name=None`` explains every op. Keyword inputs (``device="cuda"``,
    ``dtype=torch.float32``, sizes) add the per-call checks."""
    ops = registered_ops()
    if op_name is None:
        return "\n\n".join(dispatcher(o).explain(**inputs) for o in ops)
    if op_name not in ops:
        raise ValueError(f"unknown op {op_name!r}; motorec ops are: {', '.join(ops)}")
    return dispatcher(op_name).explain(**inputs)


def select_backend(op_name: str, backend: str = "auto", **inputs) -> str:
    """The backend that ``op_name`` would run for these inputs (raises like the op would)."""
    return dispatcher(op_name).select(backend, **inputs)
