"""Pure-PyTorch reference paths: the test oracle, the CPU fallback and the benchmark baseline.

One module per op, with the same stem as the op (``motorec/ops/<op>.py``, ``kernels/<op>.py``,
``csrc/*/<op>_*.cpp``): :mod:`~motorec.reference.spmm`, :mod:`~motorec.reference.propagate`,
:mod:`~motorec.reference.residual_quantize`. Nothing here imports a kernel.
"""
