"""One benchmark harness for every ``bench_*.py``: providers x shapes x modes, checked, then timed.

A benchmark is an :class:`OpBench`: it lists its providers (``torch`` is the baseline), its modes
(``forward``, ``backward``, ``full`` = forward + backward) and its configurations (shape parameters and a
dtype) for a size (``quick`` or ``full``) and a device. For each configuration the harness

1. builds the inputs once (:meth:`OpBench.setup`), with several input sets when one set would fit in the
   last-level cache on CPU, so that a timed call never starts from a cache warmed by the previous one;
2. asks the bench for a :class:`Case` per provider and mode (:meth:`OpBench.prepare`);
3. **checks** the provider's output (and gradients, in ``backward``/``full``) against a float64 reference
   (``Case.check``); a failed check records the row as ``FAILED:<why>`` and the provider is never timed;
4. times it: on CUDA with ``triton.testing.do_bench`` (warm-up, L2 flush, CUDA events, quantiles
   0.5/0.2/0.8); on CPU with ``time.perf_counter`` around each call after a warm-up, rotating input sets;
5. writes a row (median and 20/80 quantiles in ms, ``speedup_vs_torch`` against provider ``torch`` of the
   same run, shape, mode and dtype, a derived rate, peak memory, versions, git sha, status) to
   ``<out>/<device-slug>.csv`` at once, so that an interrupted run keeps what it measured.

A provider that cannot run here (``motorec.BackendUnavailable``, a missing package) is recorded as
``skipped:<reason>`` and printed; the harness never substitutes another provider.

Model: Liger-Kernel's ``benchmark/scripts/utils.py`` (rows with device, versions and a CSV per run) and the
Triton tutorials' ``perf_report``.
"""
from __future__ import annotations

import argparse
import csv
import datetime as _dt
import gc
import math
import os
import re
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch

from motorec import BackendUnavailable

# Checks shared with the tests: CheckFailed (an AssertionError) and the float64 relative-error check.
from motorec.testing import CheckFailed  # noqa: F401  (re-exported: the benches raise it)
from motorec.testing import assert_close_rel as check_close  # noqa: F401  (re-exported for the benches)

MODES = ("forward", "backward", "full")
SIZES = ("quick", "full")

COLUMNS = [
    "op", "provider", "mode", "shape", "dtype", "device", "median_ms", "p20_ms", "p80_ms", "speedup_vs_torch",
    "rate", "rate_unit", "max_err", "peak_mem_mb", "torch_version", "triton_version", "git_sha", "timestamp",
    "status", "note",
]

# Norm-wise relative error allowed against the float64 reference, per dtype of the inputs. Outputs of
# float32 paths land near 1e-7; gradients sum many rows (scatter-adds, atomics), hence a looser bound.
OUT_TOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 2e-2}
GRAD_TOL = {torch.float64: 1e-9, torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 2e-2}

RATE_SCALE = {"GB/s": 1e9, "TFLOP/s": 1e12, "items/s": 1.0, "interactions/s": 1.0, "users/s": 1.0}

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(REPO_ROOT, "benchmarks", "results")


class Skip(Exception):
    """The provider cannot run this case here; the message is the reason recorded in the row."""


@dataclass
class Case:
    """One provider in one mode on one configuration, ready to check and time.

    Attributes:
        run: ``run(i)`` performs one timed call on input set ``i`` (``0 <= i < n_sets``).
        n_sets: how many input sets to rotate through.
        check: compares the provider with the float64 reference (on input set 0); returns
            ``(max_rel_err, note)`` or raises :class:`CheckFailed`.
        amount: work per call in the unit of the bench's rate (bytes for GB/s, flops for TFLOP/s, items
            for items/s), or ``None`` for no rate.
        note: free text added to the row.
        describe: optional ``describe(median_ms) -> str`` appended to the note after timing (e.g. an
            epoch time derived from a step time). ``check`` may also set ``amount`` (known only after a run).
    """

    run: Callable[[int], Any]
    n_sets: int
    check: Callable[[], Tuple[float, str]]
    amount: Optional[float] = None
    note: str = ""
    describe: Optional[Callable[[float], str]] = None  # note text from the measured median (ms)
    rate_unit: Optional[str] = None  # overrides the bench's unit (e.g. users/s for an evaluation mode)


class OpBench:
    """Base class of a benchmark; subclasses set the class attributes and implement the four methods."""

    op: str = ""
    providers: Tuple[str, ...] = ("torch",)
    modes: Tuple[str, ...] = ("forward", "backward", "full")  # what the bench supports
    default_modes: Tuple[str, ...] = ("forward", "full")  # what runs when --modes is not given
    rate_unit: str = ""

    def configs(self, size: str, device: torch.device) -> List[Tuple[Dict[str, Any], torch.dtype]]:
        """The (shape parameters, dtype) pairs to run at ``size`` (``quick``/``full``) on ``device``."""
        raise NotImplementedError

    def shape_str(self, params: Dict[str, Any]) -> str:
        return ",".join(f"{k}={v}" for k, v in params.items())

    def setup(self, params: Dict[str, Any], dtype: torch.dtype, device: torch.device) -> Dict[str, Any]:
        """Build inputs (and lazily, reference outputs) shared by every provider and mode of a config."""
        raise NotImplementedError

    def prepare(self, state: Dict[str, Any], provider: str, mode: str) -> Case:
        """A :class:`Case` for ``provider`` in ``mode``; raise :class:`Skip` (or ``BackendUnavailable``)."""
        raise NotImplementedError


# ----------------------------------------------------------------------------------------------- environment
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine() or "cpu"


def device_name(device: torch.device) -> str:
    """Readable device name for the ``device`` column: the GPU's name, or the CPU model and thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model()} ({torch.get_num_threads()} threads)"


def device_slug(device: torch.device) -> str:
    """File-name form of the device, e.g. ``cuda-nvidia-h100-80gb-hbm3`` or ``cpu-amd-epyc``."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unknown"
    return f"{device.type}-{slug}"


def git_sha() -> str:
    env = os.environ.get("MOTOREC_GIT_SHA")
    if env:
        return env
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=10", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                             text=True, timeout=10).stdout.strip()
        if not sha:
            return "unknown"
        # the code's state: rows a benchmark appended to benchmarks/results/ do not make the next run "+dirty"
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "motorec", "kernels", "csrc", "benchmarks",
                                ":(exclude)benchmarks/results"], cwd=REPO_ROOT, capture_output=True,
                               timeout=10).returncode
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def triton_version() -> str:
    try:
        import triton

        return triton.__version__
    except ImportError:
        return "none"


def last_level_cache_bytes() -> int:
    """Size of the largest CPU cache (L3 on most machines), from sysfs; 32 MiB when unknown."""
    best = 0
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for entry in os.listdir(base):
            try:
                with open(os.path.join(base, entry, "size")) as f:
                    s = f.read().strip().upper()
            except OSError:
                continue
            m = re.match(r"(\d+)([KMG]?)", s)
            if m:
                best = max(best, int(m.group(1)) * {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[m.group(2)])
    except OSError:
        pass
    return best or (32 << 20)


def rotation_sets(bytes_per_set: int, device: torch.device, *, max_sets: int = 8,
                  max_total_bytes: int = 1 << 30) -> int:
    """How many input sets to rotate through so that a set is evicted before it is reused.

    On CUDA ``do_bench`` flushes L2 before every call, so one set suffices. On CPU: enough sets to cover twice
    the last-level cache, at most ``max_sets`` and ``max_total_bytes`` together.
    """
    if device.type == "cuda" or bytes_per_set <= 0:
        return 1
    n = math.ceil(2 * last_level_cache_bytes() / bytes_per_set)
    n = min(n, max_sets, max(1, max_total_bytes // bytes_per_set))
    return max(1, n)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------------------- timing
def _quantiles(times_ms: Sequence[float]) -> Tuple[float, float, float]:
    t = torch.tensor(list(times_ms), dtype=torch.float64)
    q = torch.quantile(t, torch.tensor([0.5, 0.2, 0.8], dtype=torch.float64))
    return float(q[0]), float(q[1]), float(q[2])


@dataclass
class TimingConfig:
    warmup_ms: float = 50.0
    rep_ms: float = 300.0
    min_reps: int = 5
    max_reps: int = 1000


def time_cpu(run: Callable[[int], Any], n_sets: int, cfg: TimingConfig) -> Tuple[float, float, float]:
    """Median, 20% and 80% quantiles (ms) of single calls timed with ``perf_counter`` after a warm-up."""
    t0 = time.perf_counter()
    calls = 0
    while True:
        run(calls % n_sets)
        calls += 1
        elapsed = time.perf_counter() - t0
        # Slow calls (over 1/4 of the warm-up each) need no rotation to defeat caches: one warm call does.
        if elapsed * 1e3 >= cfg.warmup_ms and (calls >= n_sets or elapsed * 1e3 >= 4 * cfg.warmup_ms):
            break
    estimate_ms = max(elapsed * 1e3 / calls, 1e-4)
    reps = int(min(cfg.max_reps, max(cfg.min_reps, cfg.rep_ms / estimate_ms)))
    times = []
    for j in range(reps):
        t = time.perf_counter()
        run((calls + j) % n_sets)
        times.append((time.perf_counter() - t) * 1e3)
    return _quantiles(times)


def time_cuda(run: Callable[[int], Any], n_sets: int, cfg: TimingConfig, device: torch.device) -> Tuple[float, float, float]:
    """``triton.testing.do_bench`` (L2 flushed before each call) with quantiles [0.5, 0.2, 0.8]; CUDA events
    in a loop when Triton is missing."""
    counter = [0]

    def fn():
        run(counter[0] % n_sets)
        counter[0] += 1

    # do_bench sizes its repetitions from 5 calls; give slow calls at least ~10 timed repetitions.
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    est_ms = (time.perf_counter() - t) * 1e3
    rep = max(cfg.rep_ms, min(10 * est_ms, 20 * cfg.rep_ms))
    try:
        from triton.testing import do_bench
    except ImportError:
        do_bench = None
    if do_bench is not None:
        q = do_bench(fn, warmup=int(cfg.warmup_ms), rep=int(rep), quantiles=[0.5, 0.2, 0.8])
        return float(q[0]), float(q[1]), float(q[2])
    for _ in range(max(1, int(cfg.warmup_ms / max(est_ms, 1e-3)))):
        fn()
    reps = int(min(cfg.max_reps, max(cfg.min_reps, rep / max(est_ms, 1e-3))))
    times = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e))
    return _quantiles(times)


# ---------------------------------------------------------------------------------------------------- memory
def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:  # Linux >= 4.0: writing 5 resets the process's peak RSS (VmHWM)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_memory_mb(device: torch.device) -> Optional[float]:
    """Peak memory since :func:`reset_peak_memory`: CUDA allocator peak, or the process's peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    except (ImportError, OSError):
        return None


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()


def _one_line(msg: str, limit: int = 300) -> str:
    msg = re.sub(r"\s+", " ", str(msg)).strip()
    return msg if len(msg) <= limit else msg[: limit - 3] + "..."


# ------------------------------------------------------------------------------------------------------- CSV
def append_rows(path: str, rows: Iterable[Dict[str, Any]]) -> None:
    """Append ``rows`` to the CSV at ``path``, writing the header when the file is new. A file written with
    other columns is rewritten once with :data:`COLUMNS` (plus any extra columns it had)."""
    rows = list(rows)
    if not rows:
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    columns = list(COLUMNS)
    if os.path.exists(path) and os.path.getsize(path) > 0:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            if header != COLUMNS:
                old = list(reader)
                columns += [c for c in header if c not in columns]
                with open(path + ".tmp", "w", newline="") as g:
                    w = csv.DictWriter(g, fieldnames=columns, restval="")
                    w.writeheader()
                    w.writerows(old)
                os.replace(path + ".tmp", path)
        with open(path, newline="") as f:
            columns = next(csv.reader(f))
        mode = "a"
    else:
        mode = "w"
    with open(path, mode, newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, restval="", extrasaction="ignore")
        if mode == "w":
            w.writeheader()
        w.writerows(rows)


def read_rows(path: str) -> List[Dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------------------------------------------- runner
@dataclass
class Runner:
    """Runs benches on one device, writes every row to ``<out_dir>/<device-slug>.csv`` as it is measured."""

    size: str = "quick"
    device: torch.device = field(default_factory=lambda: torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    out_dir: str = DEFAULT_OUT
    providers: Optional[Sequence[str]] = None
    modes: Optional[Sequence[str]] = None
    dtypes: Optional[Sequence[str]] = None
    write_csv: bool = True
    verbose: bool = True
    timing: Optional[TimingConfig] = None
    rows: List[Dict[str, Any]] = field(default_factory=list)

    def __post_init__(self):
        if self.size not in SIZES:
            raise ValueError(f"size must be one of {SIZES}, got {self.size!r}")
        self.device = torch.device(self.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("device='cuda' was asked for but torch.cuda.is_available() is False")
        if self.timing is None:
            self.timing = (TimingConfig(50, 300, 5, 1000) if self.size == "quick" else TimingConfig(200, 1000, 10, 5000))
            if self.device.type == "cuda":
                self.timing = TimingConfig(25, 100 if self.size == "quick" else 300, 5, 10000)
        self.base = {
            "device": device_name(self.device),
            "torch_version": torch.__version__,
            "triton_version": triton_version(),
            "git_sha": git_sha(),
            "timestamp": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        self.csv_path = os.path.join(self.out_dir, device_slug(self.device) + ".csv")

    def _emit(self, row: Dict[str, Any]) -> None:
        full = dict(self.base)
        full.update(row)
        self.rows.append(full)
        if self.write_csv:
            append_rows(self.csv_path, [full])
        if self.verbose:
            print(format_row(full), flush=True)

    def run(self, bench: OpBench) -> List[Dict[str, Any]]:
        """Check and time every provider x mode of every configuration of ``bench``; returns its rows."""
        start = len(self.rows)
        providers = [p for p in bench.providers if self.providers is None or p in self.providers]
        providers.sort(key=lambda p: p != "torch")  # the baseline first, so the others can quote a speedup
        modes = list(bench.default_modes) if self.modes is None else [m for m in bench.modes if m in self.modes]
        for params, dtype in bench.configs(self.size, self.device):
            dname = str(dtype).replace("torch.", "")
            if self.dtypes is not None and dname not in self.dtypes:
                continue
            shape = bench.shape_str(params)
            key = {"op": bench.op, "shape": shape, "dtype": dname, "rate_unit": bench.rate_unit}
            free_memory(self.device)
            try:
                state = bench.setup(params, dtype, self.device)
            except (Skip, BackendUnavailable) as e:
                for mode in modes:
                    for p in providers:
                        self._emit({**key, "provider": p, "mode": mode, "status": f"skipped:{_one_line(e)}"})
                continue
            except Exception as e:  # noqa: BLE001  (a config that cannot even be built is recorded, not fatal)
                status = (f"skipped:out of memory building inputs ({_one_line(e, 120)})" if _is_oom(e)
                          else f"FAILED:setup raised {type(e).__name__}: {_one_line(e)}")
                for mode in modes:
                    for p in providers:
                        self._emit({**key, "provider": p, "mode": mode, "status": status})
                continue
            for mode in modes:
                torch_ms = None
                for p in providers:
                    row = self._measure(bench, state, p, mode, key)
                    if p == "torch" and row.get("status") == "ok":
                        torch_ms = row["median_ms"]
                    if row.get("status") == "ok" and torch_ms is not None:
                        row["speedup_vs_torch"] = round(torch_ms / row["median_ms"], 4)
                    self._emit(row)
                    free_memory(self.device)
            del state
            free_memory(self.device)
        return self.rows[start:]

    def _measure(self, bench: OpBench, state, provider: str, mode: str, key) -> Dict[str, Any]:
        row: Dict[str, Any] = {**key, "provider": provider, "mode": mode}
        try:
            case = bench.prepare(state, provider, mode)
            reset_peak_memory(self.device)
            err, note = case.check()
            sync(self.device)
            row["max_err"] = f"{err:.2e}"
            row["note"] = "; ".join(x for x in (case.note, note) if x)
            if self.device.type == "cuda":
                med, p20, p80 = time_cuda(case.run, case.n_sets, self.timing, self.device)
            else:
                med, p20, p80 = time_cpu(case.run, case.n_sets, self.timing)
            mem = peak_memory_mb(self.device)
            amount = case.amount
            row["rate_unit"] = case.rate_unit or bench.rate_unit
            if case.describe is not None:
                row["note"] = "; ".join(x for x in (row["note"], case.describe(med)) if x)
        except (Skip, BackendUnavailable) as e:
            row["status"] = f"skipped:{_one_line(e)}"
            return row
        except CheckFailed as e:
            row["status"] = f"FAILED:{_one_line(e)}"
            return row
        except Exception as e:  # noqa: BLE001  (a crashing provider is a result, not the end of the run)
            row["status"] = (f"skipped:out of memory ({_one_line(e, 120)})" if _is_oom(e)
                             else f"FAILED:{type(e).__name__}: {_one_line(e)}")
            return row
        finally:
            case = None  # drop the provider's inputs and autograd graphs before the next one
        row.update(median_ms=round(med, 5), p20_ms=round(p20, 5), p80_ms=round(p80, 5), status="ok",
                   peak_mem_mb=None if mem is None else round(mem, 1))
        if amount is not None and med > 0:
            row["rate"] = round(amount / (med / 1e3) / RATE_SCALE[row["rate_unit"]], 4)
        return row


# ---------------------------------------------------------------------------------------------------- output
_TABLE = [("op", 17), ("provider", 13), ("mode", 8), ("shape", 34), ("dtype", 8), ("median_ms", 10),
          ("p20-p80", 19), ("speedup", 8), ("rate", 16), ("status", 0)]


def _fmt(v, nd=3) -> str:
    if v is None or v == "":
        return "-"
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    if f == 0:
        return "0"
    if abs(f) >= 100:
        return f"{f:.1f}"
    return f"{f:.{nd}g}" if abs(f) < 0.01 else f"{f:.{nd}f}"


def format_row(r: Dict[str, Any]) -> str:
    cells = {
        "op": r.get("op", ""), "provider": r.get("provider", ""), "mode": r.get("mode", ""),
        "shape": r.get("shape", ""), "dtype": r.get("dtype", ""), "median_ms": _fmt(r.get("median_ms")),
        "p20-p80": (f"{_fmt(r.get('p20_ms'))}-{_fmt(r.get('p80_ms'))}" if r.get("p20_ms") not in (None, "") else "-"),
        "speedup": (_fmt(r.get("speedup_vs_torch"), 2) + "x") if r.get("speedup_vs_torch") not in (None, "") else "-",
        "rate": (f"{_fmt(r.get('rate'))} {r.get('rate_unit', '')}" if r.get("rate") not in (None, "") else "-"),
        "status": r.get("status", ""),
    }
    return "  ".join(f"{str(cells[k]):<{w}}" if w else str(cells[k]) for k, w in _TABLE)


def format_table(rows: Sequence[Dict[str, Any]]) -> str:
    """A readable fixed-width table of ``rows`` (one line per row, header first)."""
    header = "  ".join(f"{k:<{w}}" if w else k for k, w in _TABLE)
    return "\n".join([header, "-" * len(header)] + [format_row(r) for r in rows])


def summary(rows: Sequence[Dict[str, Any]]) -> str:
    ok = sum(1 for r in rows if r.get("status") == "ok")
    failed = [r for r in rows if str(r.get("status", "")).startswith("FAILED")]
    skipped = sum(1 for r in rows if str(r.get("status", "")).startswith("skipped"))
    lines = [f"{len(rows)} rows: {ok} ok, {skipped} skipped, {len(failed)} FAILED"]
    for r in failed:
        lines.append(f"  FAILED {r['op']} {r['provider']} {r['mode']} {r['shape']} {r['dtype']}: {r['status'][7:]}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", dest="size", action="store_const", const="quick",
                      help="small set of shapes (default; the CPU targets on CPU, the issue targets on GPU)")
    size.add_argument("--full", dest="size", action="store_const", const="full", help="every shape of the grid")
    parser.set_defaults(size="quick")
    parser.add_argument("--out", default=DEFAULT_OUT, help="folder of the CSV (<out>/<device-slug>.csv)")
    parser.add_argument("--device", default=None, choices=["cpu", "cuda"],
                        help="device to benchmark (default: cuda when available, else cpu)")
    parser.add_argument("--providers", default=None, help="comma-separated providers to keep (torch is the baseline)")
    parser.add_argument("--modes", default=None, help="comma-separated modes to keep (forward,backward,full)")
    parser.add_argument("--dtypes", default=None, help="comma-separated dtypes to keep (float32,bfloat16)")
    parser.add_argument("--no-csv", action="store_true", help="print only; do not append to the CSV")


def runner_from_args(args: argparse.Namespace) -> Runner:
    def split(s):
        return [t.strip() for t in s.split(",") if t.strip()] if s else None

    modes = split(args.modes)
    for m in modes or []:
        if m not in MODES and m not in ("train", "eval"):
            raise SystemExit(f"--modes: unknown mode {m!r}; modes are {', '.join(MODES)} (train, eval for bench_train)")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    return Runner(size=args.size, device=torch.device(device), out_dir=args.out, providers=split(args.providers),
                  modes=modes, dtypes=split(args.dtypes), write_csv=not args.no_csv)


def main(benches: Sequence[OpBench], argv: Optional[Sequence[str]] = None, description: str = "") -> int:
    """Command line of a single ``bench_*.py``: run ``benches``, print the table; exit 1 if a row FAILED."""
    parser = argparse.ArgumentParser(description=description)
    add_arguments(parser)
    args = parser.parse_args(argv)
    runner = runner_from_args(args)
    print(f"# {runner.base['device']}, torch {runner.base['torch_version']}, triton {runner.base['triton_version']}, "
          f"git {runner.base['git_sha']}, size={runner.size}" + ("" if args.no_csv else f" -> {runner.csv_path}"),
          flush=True)
    for b in benches:
        runner.run(b)
    print()
    print(format_table(runner.rows))
    print(summary(runner.rows))
    return 1 if any(str(r.get("status", "")).startswith("FAILED") for r in runner.rows) else 0
