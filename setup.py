"""Build motorec and its optional compiled extension ``motorec._C``.

The CPU sources (``csrc/ops.cpp``, ``csrc/cpu/*.cpp``) are always compiled, with OpenMP.  The CUDA sources
(``csrc/cuda/*.cu``) are added when ``MOTOREC_WITH_CUDA`` says so:

* ``auto`` (default): when torch is a CUDA build and ``nvcc`` is found;
* ``1``: always (the build fails loudly if it cannot);
* ``0``: never.

``MOTOREC_NO_EXTENSION=1`` skips ``_C`` altogether; ``import motorec`` then falls back to Triton or torch.
``TORCH_CUDA_ARCH_LIST`` picks CUDA targets as usual (default here: ``9.0`` when unset and no GPU is visible).
"""
import glob
import os
import shutil
import sys

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

ROOT = os.path.dirname(os.path.abspath(__file__))


def _with_cuda():
    flag = os.environ.get("MOTOREC_WITH_CUDA", "auto").lower()
    if flag not in ("auto", "0", "1"):
        raise SystemExit(f"MOTOREC_WITH_CUDA must be auto, 0 or 1, got {flag!r}")
    if flag == "0":
        return False
    import torch
    from torch.utils.cpp_extension import CUDA_HOME

    have = torch.version.cuda is not None and (CUDA_HOME is not None or shutil.which("nvcc") is not None)
    if flag == "1" and not have:
        raise SystemExit(
            "MOTOREC_WITH_CUDA=1 but torch is not a CUDA build or nvcc was not found "
            f"(torch.version.cuda={torch.version.cuda}, CUDA_HOME={CUDA_HOME})"
        )
    return have


def _extensions():
    if os.environ.get("MOTOREC_NO_EXTENSION", "0") == "1":
        return [], {}
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    cpu_sources = ["csrc/ops.cpp"] + sorted(glob.glob("csrc/cpu/*.cpp"))
    cxx = ["-O3", "-std=c++17", "-fopenmp"]
    if sys.platform == "darwin":
        cxx = ["-O3", "-std=c++17", "-Xpreprocessor", "-fopenmp"]
    link = ["-fopenmp"] if sys.platform != "darwin" else ["-lomp"]
    if sys.platform.startswith("linux"):
        # Link the shared C++ runtime by name, ahead of anything the compiler driver appends: torch throws its
        # errors (c10::Error) from libstdc++.so.6, and a private static copy in _C (a compiler wrapper that adds
        # -static-libstdc++, as on the GPU image's /opt/gcc/bin/g++) turned every TORCH_CHECK failure inside
        # _C into a segmentation fault there (H100 machine, torch 2.11, 2026-11-27). motorec._ext refuses a
        # _C that does not load libstdc++.so.6.
        # A plain `-lstdc++` is not enough: with -static-libstdc++ the g++ driver rewrites every -lstdc++ into
        # `-Bstatic -lstdc++ -Bdynamic`, and the linker's --as-needed then drops the shared one (seen on the H200
        # image, 2026-11-30). So the file is named for the linker itself (-Wl, bypassing the driver), kept
        # whatever --as-needed says, and placed before the driver's own runtime: its symbols bind to it first.
        link.append("-Wl,--push-state,--no-as-needed,-l:libstdc++.so.6,--pop-state")
    if os.environ.get("MOTOREC_NATIVE", "0") == "1":
        cxx.append("-march=native")
    macros = []
    if _with_cuda():
        if "TORCH_CUDA_ARCH_LIST" not in os.environ:
            import torch

            if not torch.cuda.is_available():
                os.environ["TORCH_CUDA_ARCH_LIST"] = "9.0"
        ext = CUDAExtension(
            "motorec._C",
            cpu_sources + sorted(glob.glob("csrc/cuda/*.cu")),
            define_macros=macros + [("MOTOREC_WITH_CUDA", "1")],
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "-std=c++17", "--use_fast_math", "-lineinfo"]},
            extra_link_args=link,
        )
    else:
        ext = CppExtension(
            "motorec._C",
            cpu_sources,
            define_macros=macros,
            extra_compile_args={"cxx": cxx},
            extra_link_args=link,
        )
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)}


ext_modules, cmdclass = _extensions()

class build_py_with_kernels(build_py):
    """Also copy the Triton sources of the top-level ``kernels/`` folder into the built ``motorec/kernels/``.

    ``kernels/`` has no ``__init__.py`` (a regular package named ``kernels`` at the checkout's root shadowed the
    ``kernels`` distribution transformers imports), so it is not a package of its own: in a wheel its modules sit
    in ``motorec.kernels`` beside that package's ``__init__.py``; in an editable install that ``__init__.py`` adds
    the folder to its search path."""

    def run(self):
        super().run()
        dest = os.path.join(self.build_lib, "motorec", "kernels")
        os.makedirs(dest, exist_ok=True)
        for src in sorted(glob.glob(os.path.join(ROOT, "kernels", "*.py"))):
            self.copy_file(src, os.path.join(dest, os.path.basename(src)))


setup(
    packages=find_packages(include=["motorec", "motorec.*"]),
    ext_modules=ext_modules,
    cmdclass={**cmdclass, "build_py": build_py_with_kernels},
)
