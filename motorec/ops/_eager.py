"""The eager fast path of the autograd ops: the same kernels, called without the ``torch.library`` dispatch.

A call through a custom op (``motorec::residual_quantize`` and the others) passes the dispatcher, the
custom op's Python autograd wrapper and its backward op: about 0.1 ms of Python per op and direction, measured
on this project's 2-core CPU, where a MovieLens-100k MoToRec step makes seven such calls. When nothing needs
the dispatcher (plain tensors, no ``torch.compile`` tracing, no dispatch or function mode, no functorch
transform), the public functions call the selected backend's kernels through a plain
``torch.autograd.Function`` with the same forward and backward instead; everything else (``torch.compile``,
``opcheck``, fake tensors, ``vmap``/``grad``, ``TorchDispatchMode``\\ s such as
:func:`motorec.testing.no_host_sync`) still goes through the custom ops. The two paths compute the same
values and gradients with the same kernels; ``tests/ops/test_eager_fast_path.py`` checks that they agree bit
for bit. ``MOTOREC_OP_FASTPATH=0`` sends every call through the custom ops (e.g. to see them in a profile).
"""
from __future__ import annotations

import os

import torch
from torch import Tensor
from torch.utils._python_dispatch import _get_current_dispatch_mode

_ENV = "MOTOREC_OP_FASTPATH"
_PLAIN = (Tensor, torch.nn.Parameter)


def fast_path_enabled() -> bool:
    """``MOTOREC_OP_FASTPATH`` (default on; ``0`` turns the fast path off), read at every call."""
    raw = os.environ.get(_ENV, "1").strip().lower()
    if raw in ("1", "", "true", "on", "yes"):
        return True
    if raw in ("0", "false", "off", "no"):
        return False
    raise ValueError(f"{_ENV} must be 1 or 0, got {raw!r}")


def eager(*tensors) -> bool:
    """Whether a call on ``tensors`` (``None`` entries allowed) may skip the custom-op dispatch."""
    if not fast_path_enabled():
        return False
    if torch.compiler.is_compiling() or torch.jit.is_scripting():
        return False
    if _get_current_dispatch_mode() is not None or torch._C._is_torch_function_mode_enabled():
        return False
    if torch._C._functorch.peek_interpreter_stack() is not None:
        return False
    for t in tensors:
        # a plain tensor or an nn.Parameter (which disables __torch_function__: it dispatches as a plain tensor;
        # modules pass their weights as Parameters); any other subclass may override dispatch
        if t is not None and (type(t) not in _PLAIN or torch._C._functorch.is_functorch_wrapped_tensor(t)):
            return False
    return True
