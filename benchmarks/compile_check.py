"""Compile-time gates, no GPU needed: registers, spills and instruction mix of every kernel, for sm_90.

Triton: every ``kernels/*.py`` module, imported as ``motorec.kernels.<name>``, declares ``compile_specs()`` ->
list of :class:`CompileSpec` (one per kernel configuration that matters); each is compiled offline with
``triton.compile(ASTSource(...), target=GPUTarget("cuda", 90, 32))``. Registers and the stack frame come from
``cuobjdump -res-usage`` on the cubin, spill bytes from ``ptxas -v`` on the PTX (the ptxas Triton itself picks
for sm_90), the instruction mix from ``cuobjdump -sass``: tensor-core instructions (HGMMA/HMMA) as a share of
the whole kernel and of its *tile loop*, the innermost backward-branch loop that contains tensor-core
instructions (static instruction counts, one pass of the loop body). A module with a ``@triton.jit`` function
named ``*_kernel`` that no spec covers fails the gate: new kernels join by adding specs.

CUDA: ``.ci/nvcc_check.sh -Xptxas -v`` compiles every ``csrc/cuda/*.cu``; each entry function's registers,
stack frame and spill bytes are parsed from ptxas's report. Every CUDA kernel must spill 0 bytes.

Fails (exit 1) when a kernel spills, exceeds its register budget, misses its tensor-core share or does not
compile. Usage::

    python benchmarks/compile_check.py [--triton-only | --cuda-only] [--only NAME_SUBSTRING] [--json OUT]

Needs: triton (with its bundled ptxas/cuobjdump) for the Triton part; nvcc for the CUDA part.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parents[1]
ARCH = 90
TENSOR_OPS = ("HGMMA", "HMMA", "QGMMA", "IGMMA", "IMMA")


@dataclasses.dataclass
class CompileSpec:
    """One offline compilation of a Triton kernel and its budget.

    Attributes:
        label: short name printed in the table (unique per module).
        fn: the ``@triton.jit`` kernel.
        signature: Triton types of the runtime arguments (``"*fp32"``, ``"i32"``, ...); constexpr arguments
            are filled in from ``constexprs``.
        constexprs: values of the ``tl.constexpr`` arguments.
        num_warps, num_stages: launch options as the launcher passes them (``num_stages=None``: Triton's).
        maxnreg: the register cap the launcher passes (``maxnreg=`` launch option, ptxas's ``.maxnreg``), or None.
            A capped kernel meets its register budget by construction, so its spill bytes are what the gate
            checks: ptxas spills rather than exceed the cap.
        max_regs: registers per thread allowed (255 = the hardware limit, i.e. no budget beyond 0 spills).
        max_spill_bytes: spill stores + loads allowed (bytes, ptxas's figures).
        min_tensor_share: least share of tensor-core instructions in the tile loop (0 = not gated).
        target_regs: the register count an open issue aims for, when it is below ``max_regs``: reported as met or
            missed on every run, never a failure (``max_regs`` is what the kernel holds today, a regression gate).
    """

    label: str
    fn: Any
    signature: Dict[str, str]
    constexprs: Dict[str, Any]
    num_warps: int = 4
    num_stages: Optional[int] = None
    maxnreg: Optional[int] = None
    max_regs: int = 255
    max_spill_bytes: int = 0
    min_tensor_share: float = 0.0
    target_regs: Optional[int] = None


def _tool(name: str) -> str:
    import triton

    p = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
    return str(p) if p.exists() else name


def _run(cmd: List[str], **kw) -> str:
    res = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} ... failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    return res.stdout + res.stderr


_SASS_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_]*)([.A-Z0-9_]*)([^;]*);")


def parse_sass(text: str) -> List[Tuple[int, str, str]]:
    """``cuobjdump -sass`` text of one function -> [(address, opcode, operands)]."""
    return [(int(m.group(1), 16), m.group(2), m.group(4)) for m in _SASS_LINE.finditer(text)]


def tile_loop(instrs: List[Tuple[int, str, str]]) -> Optional[Tuple[int, int]]:
    """(start, end) addresses of the innermost backward-branch loop that holds tensor-core instructions."""
    tensor_addrs = [a for a, op, _ in instrs if op in TENSOR_OPS]
    if not tensor_addrs:
        return None
    loops = []
    for a, op, ops in instrs:
        m = re.search(r"0x([0-9a-f]+)", ops) if op == "BRA" else None
        if m and int(m.group(1), 16) < a:
            loops.append((int(m.group(1), 16), a))
    holding = [(s, e) for s, e in loops if any(s <= t <= e for t in tensor_addrs)]
    return min(holding, key=lambda se: se[1] - se[0]) if holding else None


def instruction_mix(instrs: List[Tuple[int, str, str]]) -> Dict[str, Any]:
    ops = Counter(op for _, op, _ in instrs if op != "NOP")
    total = sum(ops.values())
    tensor = sum(ops[o] for o in TENSOR_OPS)
    out: Dict[str, Any] = {
        "instructions": total, "tensor": tensor, "local_ld_st": ops["LDL"] + ops["STL"],
        "top": ", ".join(f"{o} {c}" for o, c in ops.most_common(6)),
    }
    loop = tile_loop(instrs)
    if loop is not None:
        body = [op for a, op, _ in instrs if loop[0] <= a <= loop[1] and op != "NOP"]
        t = sum(1 for op in body if op in TENSOR_OPS)
        out.update(loop_instructions=len(body), loop_tensor=t, loop_tensor_share=t / max(len(body), 1),
                   loop_top=", ".join(f"{o} {c}" for o, c in Counter(body).most_common(6)))
    return out


def _ptxas_spills(ptx: str, tmp: Path) -> Tuple[int, int, int]:
    """(registers, spill store bytes, spill load bytes) from ``ptxas -v`` on Triton's PTX."""
    target = re.search(r"\.target\s+(sm_\w+)", ptx).group(1)
    src = tmp / "k.ptx"
    src.write_text(ptx)
    from triton.backends.nvidia.compiler import get_ptxas

    log = _run([get_ptxas(ARCH).path, "-v", f"--gpu-name={target}", str(src), "-o", str(tmp / "k.o")])
    regs = int(re.search(r"Used (\d+) registers", log).group(1))
    m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    return regs, int(m.group(1)), int(m.group(2))


def discover_specs(only: Optional[str] = None) -> Tuple[List[Tuple[str, CompileSpec]], List[str]]:
    """All (module, spec) pairs from kernels/*.py, and the problems found (uncovered kernels, bad modules)."""
    import triton

    # The checkout's root goes last on sys.path, after site-packages (for `benchmarks`, and for motorec when it is
    # not installed): the Triton modules are imported as motorec.kernels.<op>, never as a top-level `kernels`,
    # which is another distribution's name.
    if str(ROOT) not in sys.path:
        sys.path.append(str(ROOT))
    specs, problems = [], []
    for path in sorted((ROOT / "kernels").glob("*.py")):
        if path.name.startswith("_"):
            continue
        modname = f"motorec.kernels.{path.stem}"
        try:
            mod = importlib.import_module(modname)
        except Exception as e:  # noqa: BLE001 - reported as a gate failure
            problems.append(f"{modname}: import failed: {e!r}")
            continue
        if Path(mod.__file__).resolve() != path.resolve():
            problems.append(f"{modname} is {mod.__file__}, not this checkout's {path} (a non-editable motorec is "
                            "installed: `pip install --no-build-isolation -e .` gates the sources here)")
            continue
        kernels = {n for n, v in vars(mod).items() if isinstance(v, triton.runtime.JITFunction) and n.endswith("_kernel")}
        mine = list(mod.compile_specs()) if hasattr(mod, "compile_specs") else []
        covered = {s.fn.__name__ for s in mine}
        for n in sorted(kernels - covered):
            problems.append(f"{modname}.{n}: no CompileSpec (add one to {modname}.compile_specs())")
        specs += [(path.stem, s) for s in mine if only is None or only in f"{path.stem}:{s.label}"]
    return specs, problems


def compile_triton(spec: CompileSpec) -> Dict[str, Any]:
    import triton
    from triton.backends.compiler import GPUTarget

    sig = dict(spec.signature)
    for name in spec.constexprs:
        sig[name] = "constexpr"
    options = {"num_warps": spec.num_warps}
    if spec.num_stages is not None:
        options["num_stages"] = spec.num_stages
    if spec.maxnreg is not None:
        options["maxnreg"] = spec.maxnreg
    t0 = time.time()
    # A launch with torch tensors specializes every 16-byte-aligned pointer (tt.divisibility = 16), which
    # decides vector widths and layouts: compile what the launcher gets.
    attrs = {(spec.fn.arg_names.index(n),): [["tt.divisibility", 16]]
             for n, t in spec.signature.items() if t.startswith("*")}
    k = triton.compile(triton.compiler.ASTSource(spec.fn, sig, spec.constexprs, attrs),
                       target=GPUTarget("cuda", ARCH, 32), options=options)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        (tmp / "k.cubin").write_bytes(k.asm["cubin"])
        res = _run([_tool("cuobjdump"), "-res-usage", str(tmp / "k.cubin")])
        m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+)", res)
        sass = _run([_tool("cuobjdump"), "-sass", str(tmp / "k.cubin")])
        _, spill_st, spill_ld = _ptxas_spills(k.asm["ptx"], tmp)
    row = {"regs": int(m.group(1)), "stack": int(m.group(2)), "shared": int(k.metadata.shared),
           "spill_st": spill_st, "spill_ld": spill_ld, "compile_s": round(time.time() - t0, 1)}
    row.update(instruction_mix(parse_sass(sass)))
    return row


def gate_triton(spec: CompileSpec, row: Dict[str, Any]) -> List[str]:
    bad = []
    if row["regs"] > spec.max_regs:
        bad.append(f"{row['regs']} registers > budget {spec.max_regs}")
    if row["spill_st"] + row["spill_ld"] > spec.max_spill_bytes:
        bad.append(f"spills {row['spill_st']} B stores + {row['spill_ld']} B loads > {spec.max_spill_bytes}")
    if spec.min_tensor_share > 0 and row.get("loop_tensor_share", 0.0) < spec.min_tensor_share:
        bad.append(f"tensor-core share of the tile loop {row.get('loop_tensor_share', 0.0):.3f} < "
                   f"{spec.min_tensor_share}")
    return bad


_PTXAS_ENTRY = re.compile(r"Compiling entry function '([^']+)' for '(sm_\w+)'")
_PTXAS_PROPS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_PTXAS_REGS = re.compile(r"Used (\d+) registers")


def parse_ptxas_log(log: str) -> List[Dict[str, Any]]:
    """``ptxas -v`` output -> one dict per entry function (name, regs, stack, spill_st, spill_ld)."""
    rows: List[Dict[str, Any]] = []
    cur: Optional[Dict[str, Any]] = None
    for line in log.splitlines():
        m = _PTXAS_ENTRY.search(line)
        if m:
            cur = {"name": m.group(1), "arch": m.group(2)}
            rows.append(cur)
            continue
        if cur is None:
            continue
        m = _PTXAS_PROPS.search(line)
        if m:
            cur.update(stack=int(m.group(1)), spill_st=int(m.group(2)), spill_ld=int(m.group(3)))
        m = _PTXAS_REGS.search(line)
        if m:
            cur["regs"] = int(m.group(1))
    return rows


def _demangle(names: List[str]) -> List[str]:
    try:
        out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True, check=True).stdout
        return out.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return names


def _short(name: str) -> str:
    name = re.sub(r"^void ", "", name)
    name = re.sub(r"motorec::cuda::(\(anonymous namespace\)::)?", "", name)
    name = re.sub(r"c10::(Half|BFloat16)", r"\1", name)
    name = re.sub(r"\(.*\)$", "", name)
    return name.replace("unsigned long", "u64").replace(" ", "")


def compile_cuda() -> Tuple[List[Dict[str, Any]], List[str]]:
    with tempfile.TemporaryDirectory() as d:
        env = dict(os.environ, NVCC_KEEP_DIR=d)
        res = subprocess.run(["bash", str(ROOT / ".ci" / "nvcc_check.sh"), "-Xptxas", "-v"], env=env,
                             capture_output=True, text=True, cwd=ROOT)
        if res.returncode != 0:
            return [], [f"nvcc_check.sh failed:\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}"]
        rows = []
        for log in sorted(Path(d).glob("*.log")):
            for r in parse_ptxas_log(log.read_text()):
                r["file"] = log.stem
                rows.append(r)
    for r, dn in zip(rows, _demangle([r["name"] for r in rows])):
        r["name"] = _short(dn)
    problems = [f"{r['file']}: {r['name']}: spills {r['spill_st']} B stores + {r['spill_ld']} B loads"
                for r in rows if r.get("spill_st", 0) + r.get("spill_ld", 0) > 0]
    problems += [f"{r['file']}: {r['name']}: no ptxas figures" for r in rows if "regs" not in r]
    if not rows:
        problems.append("nvcc_check.sh reported no entry functions (ptxas -v output missing)")
    return rows, problems


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--triton-only", action="store_true")
    ap.add_argument("--cuda-only", action="store_true")
    ap.add_argument("--only", default=None, help="substring of 'module:label' for the Triton specs")
    ap.add_argument("--json", default=None, help="write every figure to this file")
    args = ap.parse_args(argv)
    problems: List[str] = []
    targets: List[str] = []
    report: Dict[str, Any] = {"arch": f"sm_{ARCH}", "triton": [], "cuda": []}

    if not args.cuda_only:
        import triton

        specs, probs = discover_specs(args.only)
        problems += probs
        print(f"Triton {triton.__version__}, offline sm_{ARCH} ({len(specs)} specs)")
        print(f"{'kernel':<44} {'regs':>4}/{'max':<3} {'spill':>9} {'stack':>5} {'smem':>6} {'instr':>6} "
              f"{'tc':>4} {'loop':>5} {'loop tc':>8} {'LDL/STL':>7}")
        for mod, spec in specs:
            name = f"{mod}:{spec.label}"
            try:
                row = compile_triton(spec)
            except Exception as e:  # noqa: BLE001 - a kernel that does not compile fails the gate
                problems.append(f"{name}: compile failed: {e!r}"[:2000])
                print(f"{name:<44} COMPILE FAILED")
                continue
            bad = gate_triton(spec, row)
            problems += [f"{name}: {b}" for b in bad]
            share = f"{row['loop_tensor']}={100 * row['loop_tensor_share']:.1f}%" if "loop_tensor" in row else "-"
            print(f"{name:<44} {row['regs']:>4}/{spec.max_regs:<3} {row['spill_st']:>4}+{row['spill_ld']:<4} "
                  f"{row['stack']:>5} {row['shared']:>6} {row['instructions']:>6} {row['tensor']:>4} "
                  f"{row.get('loop_instructions', '-'):>5} {share:>8} {row['local_ld_st']:>7}"
                  f"{'  FAIL' if bad else ''}")
            report["triton"].append({"name": name, **row, "budget_regs": spec.max_regs,
                                     "budget_spill": spec.max_spill_bytes, "target_regs": spec.target_regs})
            if spec.target_regs is not None:
                targets.append(f"{name}: {row['regs']} registers, target {spec.target_regs}: "
                               f"{'met' if row['regs'] <= spec.target_regs else 'NOT MET (open)'}")
        for name in [r["name"] for r in report["triton"]]:
            r = next(x for x in report["triton"] if x["name"] == name)
            if "loop_top" in r:
                print(f"  {name} tile loop mix: {r['loop_top']}")

    if not args.triton_only:
        rows, probs = compile_cuda()
        problems += probs
        report["cuda"] = rows
        print(f"\nCUDA (nvcc, sm_{ARCH}): {len(rows)} entry functions")
        print(f"{'file':<16} {'regs':>4} {'stack':>5} {'spill':>9}  kernel")
        for r in rows:
            print(f"{r['file']:<16} {r.get('regs', '?'):>4} {r.get('stack', '?'):>5} "
                  f"{r.get('spill_st', '?'):>4}+{r.get('spill_ld', '?'):<4}  {r['name'][:110]}")

    for t in targets:
        print(f"target: {t}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    if problems:
        print("\ncompile_check: FAILED", file=sys.stderr)
        for p in problems:
            print(f"  {p}", file=sys.stderr)
        return 1
    print("\ncompile_check: all gates pass")
    return 0


if __name__ == "__main__":
    sys.exit(main())
