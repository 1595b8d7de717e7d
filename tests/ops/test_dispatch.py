import os
import subprocess
import sys

import pytest
import torch

import motorec
from motorec import BackendUnavailable, _ext
from motorec.testing import power_law_graph


def test_explain_lists_every_backend_with_reasons():
    for op in ("spmm", "propagate", "residual_quantize"):
        text = motorec.ops.explain(op)
        for name in ("torch", "cpu", "triton", "cuda"):
            assert f"  {name} " in text, text
        assert "auto picks" in text
    assert "motorec.ops.spmm" in motorec.ops.explain()
    with pytest.raises(ValueError, match="unknown op"):
        motorec.ops.explain("nope")


@pytest.mark.skipif(_ext.HAS_C_CUDA, reason="this machine can run CUDA")
def test_explicit_cuda_raises_with_reason(no_backend_env):
    g = power_law_graph(30, 20, 100)
    x = torch.randn(50, 8)
    for fn in (lambda: motorec.ops.spmm(g, x, backend="cuda"), lambda: motorec.ops.propagate(g, x, 2, backend="cuda")):
        with pytest.raises(BackendUnavailable, match="backend='cuda' cannot run"):
            fn()
    with pytest.raises(BackendUnavailable, match="residual_quantize"):
        motorec.ops.residual_quantize(torch.randn(4, 8), torch.randn(2, 3, 8), backend="cuda")


def test_unknown_backend_is_a_clear_error(no_backend_env):
    g = power_law_graph(10, 10, 30)
    with pytest.raises(ValueError, match="backend must be one of"):
        motorec.ops.spmm(g, torch.randn(20, 3), backend="gpu")


def test_env_backend(monkeypatch):
    g = power_law_graph(10, 10, 30)
    x = torch.randn(20, 3)
    monkeypatch.setenv("MOTOREC_BACKEND", "torch")
    assert motorec.ops.select_backend("spmm", "auto", device="cpu") == "torch"
    monkeypatch.setenv("MOTOREC_BACKEND", "spmm=cuda,propagate=torch")
    if not _ext.HAS_C_CUDA:
        with pytest.raises(BackendUnavailable):
            motorec.ops.spmm(g, x)
    assert motorec.ops.select_backend("propagate", "auto", device="cpu") == "torch"
    assert motorec.ops.select_backend("residual_quantize", "torch", device="cpu") == "torch"  # explicit wins
    monkeypatch.setenv("MOTOREC_BACKEND", "bogus")
    with pytest.raises(ValueError, match="MOTOREC_BACKEND"):
        motorec.ops.spmm(g, x)
    monkeypatch.setenv("MOTOREC_BACKEND", "spmm=fastest")
    with pytest.raises(ValueError, match=r"MOTOREC_BACKEND must name one of .*got 'fastest'"):
        motorec.ops.spmm(g, x)


def test_explicit_backend_that_cannot_serve_the_inputs_says_why(no_backend_env):
    g = power_law_graph(10, 10, 30)
    x = torch.randn(20, 7)
    # float16 on CPU: neither the C++ CPU kernel nor CUDA serves it, whatever is built here.
    with pytest.raises(BackendUnavailable, match=r"backend='cpu' cannot run spmm: .*(float16|not built|disabled)"):
        motorec.ops.spmm(g, x.half(), backend="cpu")
    with pytest.raises(BackendUnavailable, match=r"backend='cuda' cannot run propagate"):
        motorec.ops.propagate(g, x, 1, backend="cuda")


def test_auto_never_picks_interpreter_for_cpu_tensors(no_backend_env):
    assert motorec.ops.select_backend("residual_quantize", "auto", device="cpu", dtype=torch.float32) != "triton"


def test_import_without_compiled_extension():
    """`import motorec` and every op work when motorec._C is unavailable (falling back to torch)."""
    code = (
        "import torch, motorec\n"
        "from motorec import _ext\n"
        "assert not _ext.HAS_C, _ext.C_REASON\n"
        "print(motorec.ops.explain('spmm'))\n"
        "from motorec.testing import power_law_graph\n"
        "g = power_law_graph(40, 30, 200)\n"
        "x = torch.randn(70, 5)\n"
        "y = motorec.ops.propagate(g, x, 2)\n"
        "o = motorec.ops.residual_quantize(torch.randn(9, 5), torch.randn(2, 4, 5))\n"
        "assert o.codes.shape == (9, 2) and y.shape == x.shape\n"
        "try:\n"
        "    motorec.ops.spmm(g, x, backend='cpu')\n"
        "except motorec.BackendUnavailable as e:\n"
        "    assert 'MOTOREC_DISABLE_C' in str(e), e\n"
        "else:\n"
        "    raise SystemExit('cpu backend served without _C')\n"
        "print('OK')\n"
    )
    env = dict(os.environ, MOTOREC_DISABLE_C="1")
    env.pop("MOTOREC_BACKEND", None)
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "OK" in r.stdout and "cpu     unavailable  motorec._C disabled" in r.stdout


def _tiny_elf(needed):
    """A minimal 64-bit little-endian ELF: one PT_LOAD over the whole file and a PT_DYNAMIC with ``needed``."""
    import struct

    strtab = b"\0" + b"".join(n.encode() + b"\0" for n in needed)
    ph_off, n_ph = 64, 2
    dyn_off = ph_off + 56 * n_ph
    entries, pos = [], 1
    for n in needed:
        entries.append((1, pos))  # DT_NEEDED
        pos += len(n) + 1
    vaddr = 0x400000
    str_off = dyn_off + 16 * (len(entries) + 2)
    entries += [(5, vaddr + str_off), (0, 0)]  # DT_STRTAB, DT_NULL
    size = str_off + len(strtab)
    head = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    head += struct.pack("<HHIQQQIHHHHHH", 3, 62, 1, 0, ph_off, 0, 0, 64, 56, n_ph, 64, 0, 0)
    ph = struct.pack("<IIQQQQQQ", 1, 5, 0, vaddr, vaddr, size, size, 0x1000)
    ph += struct.pack("<IIQQQQQQ", 2, 6, dyn_off, vaddr + dyn_off, vaddr + dyn_off, 16 * len(entries),
                      16 * len(entries), 8)
    dyn = b"".join(struct.pack("<qQ", t, v) for t, v in entries)
    return head + ph + dyn + strtab


def test_elf_needed_reads_dynamic_section(tmp_path):
    p = tmp_path / "lib.so"
    p.write_bytes(_tiny_elf(["libc10.so", "libstdc++.so.6", "libc.so.6"]))
    assert _ext.elf_needed(str(p)) == ["libc10.so", "libstdc++.so.6", "libc.so.6"]
    assert _ext._cxx_runtime_problem(str(p)) == ""
    (tmp_path / "text.so").write_text("not an ELF file")
    assert _ext.elf_needed(str(tmp_path / "text.so")) is None
    assert _ext.elf_needed(str(tmp_path / "missing.so")) is None
    (tmp_path / "cut.so").write_bytes(_tiny_elf(["libc.so.6"])[:80])  # header promises headers it lacks
    assert _ext.elf_needed(str(tmp_path / "cut.so")) is None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ELF / libstdc++ check is Linux-only")
def test_extension_with_static_cxx_runtime_is_refused(tmp_path):
    """A _C that carries its own C++ runtime (no libstdc++.so.6 in DT_NEEDED) is refused with a reason: torch
    errors raised inside such a build crashed the process (H100 image, torch 2.11)."""
    p = tmp_path / "_C.so"
    p.write_bytes(_tiny_elf(["libc10.so", "libtorch_cpu.so", "libgomp.so.1", "libc.so.6"]))
    reason = _ext._cxx_runtime_problem(str(p))
    assert "does not load libstdc++.so.6" in reason and "CXX=g++" in reason


@pytest.mark.skipif(not (_ext.HAS_C and sys.platform.startswith("linux")), reason="needs motorec._C on Linux")
def test_built_extension_loads_shared_libstdcxx():
    from motorec import _C

    needed = _ext.elf_needed(_C.__file__)
    assert needed is not None and any(n.startswith("libstdc++.so") for n in needed), needed
