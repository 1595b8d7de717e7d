"""pytest-benchmark CPU regression suite: one function per op and mode, providers by parametrize.

Small shapes (odd sizes: D=33, N not a multiple of a block, K not a power of two), so that CI can run it as
``pytest benchmarks/test_bench_cpu.py --benchmark-disable`` (each benchmark body runs once) or with a few
rounds. Each test first checks the provider against the float64 reference through the bench's own check
(the same code the harness runs), then benchmarks one call. Providers that cannot run here
(``motorec._C`` not built, no CUDA, a package missing) skip with the reason.

Also here: tests of the harness itself (a wrong provider is recorded FAILED and never timed, an unavailable
one is skipped). The checks it shares with the tests (``motorec.testing``) are tested in
``tests/ops/test_testing.py``.
"""
from __future__ import annotations

import pytest
import torch

from benchmarks import harness
from benchmarks.bench_propagate import PropagateBench
from benchmarks.bench_residual_quantize import ResidualQuantizeBench
from benchmarks.bench_source_attention import SourceAttentionBench
from benchmarks.bench_spmm import SpmmBench
from benchmarks.bench_train import TrainBench
from motorec import BackendUnavailable

CPU = torch.device("cpu")
GRAPH = {"nodes": 1501, "nnz": 12_000, "D": 33}
RQ = {"N": 1000, "D": 48, "K": 100, "L": 3}
TRAIN = {"users": 800, "items": 500, "interactions": 6_000}
SA = {"M": 3, "N": 1027, "d": 33}

_STATES = {}


def _state(bench, params, dtype=torch.float32):
    key = (bench.op, tuple(params.items()), dtype)
    if key not in _STATES:
        _STATES.clear()
        try:
            _STATES[key] = bench.setup(params, dtype, CPU)
        except harness.Skip as e:
            pytest.skip(str(e))
    return _STATES[key]


def _checked_case(bench, params, provider, mode, dtype=torch.float32):
    state = _state(bench, params, dtype)
    try:
        case = bench.prepare(state, provider, mode)
        err, note = case.check()
    except (harness.Skip, BackendUnavailable) as e:
        pytest.skip(f"{provider}: {e}")
    except harness.CheckFailed as e:
        pytest.fail(f"{bench.op} {provider} {mode}: disagrees with the reference: {e}")
    return case


# ----------------------------------------------------------------------------------------------- op benches
@pytest.mark.parametrize("provider", SpmmBench.providers)
def test_spmm_forward(benchmark, provider):
    case = _checked_case(SpmmBench(), GRAPH, provider, "forward")
    benchmark(case.run, 0)


@pytest.mark.parametrize("provider", SpmmBench.providers)
def test_spmm_full(benchmark, provider):
    case = _checked_case(SpmmBench(), GRAPH, provider, "full")
    benchmark(case.run, 0)


@pytest.mark.parametrize("provider", PropagateBench.providers)
def test_propagate_forward(benchmark, provider):
    case = _checked_case(PropagateBench(), {**GRAPH, "layers": 3}, provider, "forward")
    benchmark(case.run, 0)


@pytest.mark.parametrize("provider", PropagateBench.providers)
def test_propagate_backward(benchmark, provider):
    case = _checked_case(PropagateBench(), {**GRAPH, "layers": 3}, provider, "backward")
    case.run(0)  # builds the retained forward graph outside the measured call
    benchmark(case.run, 0)


@pytest.mark.parametrize("provider", PropagateBench.providers)
def test_propagate_full(benchmark, provider):
    case = _checked_case(PropagateBench(), {**GRAPH, "layers": 3}, provider, "full")
    benchmark(case.run, 0)


_RQ_PROVIDERS = [pytest.param(p, marks=[pytest.mark.slow] if p.startswith("torch_compile") else [])
                 for p in ResidualQuantizeBench.providers]


@pytest.mark.parametrize("provider", _RQ_PROVIDERS)
def test_residual_quantize_forward(benchmark, provider):
    case = _checked_case(ResidualQuantizeBench(), RQ, provider, "forward")
    benchmark(case.run, 0)


@pytest.mark.parametrize("provider", _RQ_PROVIDERS)
def test_residual_quantize_full(benchmark, provider):
    case = _checked_case(ResidualQuantizeBench(), RQ, provider, "full")
    benchmark(case.run, 0)


@pytest.mark.parametrize("provider", SourceAttentionBench.providers)
def test_source_attention_full(benchmark, provider):
    case = _checked_case(SourceAttentionBench(), SA, provider, "full")
    benchmark(case.run, 0)


@pytest.mark.parametrize("provider", TrainBench.providers)
def test_train_step(benchmark, provider):
    case = _checked_case(TrainBench(), TRAIN, provider, "train")
    benchmark.pedantic(case.run, args=(1,), rounds=1, iterations=1)  # one optimizer step: seconds on CPU


# --------------------------------------------------------------------------------------------- the harness
class _ToyBench(harness.OpBench):
    """``y = 2 x``: provider ``torch`` is right, ``wrong`` is off by 1%, ``absent`` is unavailable."""

    op = "toy"
    providers = ("torch", "wrong", "absent", "crash")
    modes = ("forward",)
    default_modes = ("forward",)
    rate_unit = "GB/s"

    def __init__(self):
        self.calls = {p: 0 for p in self.providers}

    def configs(self, size, device):
        return [({"n": 513}, torch.float32)]

    def setup(self, params, dtype, device):
        return {"x": torch.randn(params["n"], dtype=dtype, device=device)}

    def prepare(self, state, provider, mode):
        x = state["x"]
        if provider == "absent":
            raise BackendUnavailable("backend='absent' cannot run toy: not built")
        factor = {"torch": 2.0, "wrong": 2.02, "crash": 2.0}[provider]

        def run(i):
            self.calls[provider] += 1
            if provider == "crash":
                raise RuntimeError("kernel exploded")
            return x * factor

        def check():
            return harness.check_close(run(0), x.double() * 2, harness.OUT_TOL[torch.float32], "output"), ""

        return harness.Case(run, 1, check, amount=8.0 * x.numel())


def test_harness_records_failed_skipped_and_ok(tmp_path):
    bench = _ToyBench()
    runner = harness.Runner(size="quick", device=CPU, out_dir=str(tmp_path), verbose=False,
                            timing=harness.TimingConfig(1, 2, 3, 10))
    rows = {r["provider"]: r for r in runner.run(bench)}
    assert rows["torch"]["status"] == "ok" and rows["torch"]["speedup_vs_torch"] == 1.0
    assert rows["torch"]["median_ms"] > 0 and rows["torch"]["p20_ms"] <= rows["torch"]["p80_ms"]
    assert rows["torch"]["rate"] > 0 and rows["torch"]["rate_unit"] == "GB/s"
    assert rows["wrong"]["status"].startswith("FAILED:output: relative error")
    assert bench.calls["wrong"] == 1, "a provider that failed its check must never be timed"
    assert rows["absent"]["status"] == "skipped:backend='absent' cannot run toy: not built"
    assert rows["crash"]["status"] == "FAILED:RuntimeError: kernel exploded"
    written = harness.read_rows(runner.csv_path)
    assert [r["provider"] for r in written] == ["torch", "wrong", "absent", "crash"]
    assert set(written[0]) == set(harness.COLUMNS)
    runner2 = harness.Runner(size="quick", device=CPU, out_dir=str(tmp_path), verbose=False,
                             timing=harness.TimingConfig(1, 2, 3, 10))
    runner2.run(_ToyBench())
    assert len(harness.read_rows(runner.csv_path)) == 8  # appended under the same header


def test_rotation_sets_cover_cache():
    llc = harness.last_level_cache_bytes()
    n = harness.rotation_sets(llc // 4, CPU)
    assert n * (llc // 4) >= min(2 * llc, 8 * (llc // 4))
    assert harness.rotation_sets(4 * llc, CPU) == 1


def test_git_sha_is_dirty_for_code_changes_not_for_appended_result_rows(tmp_path, monkeypatch):
    import shutil
    import subprocess

    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    monkeypatch.delenv("MOTOREC_GIT_SHA", raising=False)
    monkeypatch.setattr(harness, "REPO_ROOT", tmp_path)

    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    (tmp_path / "benchmarks" / "bench_x.py").write_text("x = 1\n")
    (tmp_path / "benchmarks" / "results" / "x.csv").write_text("a\n")
    git("init", "-q")
    git("add", "-A")
    git("commit", "-qm", "init")
    clean = harness.git_sha()
    assert len(clean) == 10 and "+dirty" not in clean
    (tmp_path / "benchmarks" / "results" / "x.csv").write_text("a\n1\n")  # a benchmark appended its row
    assert harness.git_sha() == clean
    (tmp_path / "benchmarks" / "bench_x.py").write_text("x = 2\n")  # the code changed
    assert harness.git_sha() == clean + "+dirty"
