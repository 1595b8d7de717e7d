"""A C++ error inside ``motorec._C`` must reach Python as ``RuntimeError``, on CPU and (when present) CUDA
tensors: a ``_C`` linked with a private static C++ runtime turned every TORCH_CHECK failure into a segmentation
fault (the GPU image's g++ wrapper, 2026-11-27 and 2026-11-30; see setup.py). Calls the raw op directly, past
``motorec._ext``'s refusal of such a ``_C``. Exit status 0 only when every device raised.

Run: ``python -m benchmarks.c_error_path`` (gpu_check.sh and gpu_cuda_check.sh run it after the build).
"""
import torch

from motorec import _C, _ext


def main() -> int:
    print("motorec._C loads", _ext.elf_needed(_C.__file__))
    for dev in ("cpu",) + (("cuda",) if torch.cuda.is_available() else ()):
        r, c, v, x = (torch.tensor([0, 1, 2], device=dev), torch.tensor([1, 0], device=dev),
                      torch.ones(2, device=dev), torch.randn(2, 3, device=dev))
        try:
            torch.ops.motorec_C.propagate(r, c, v, x, -1)
        except RuntimeError as e:
            print(dev, "raised:", str(e).splitlines()[0])
        else:
            print(dev, ": no error raised")
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
