"""Fixtures for ``benchmarks/test_bench_cpu.py``.

Where pytest-benchmark is not installed (it is optional: ``pip install motorec[bench]``), a stand-in
``benchmark`` fixture runs the body once, so the suite still checks every provider against the reference.
"""
import pytest

try:
    import pytest_benchmark  # noqa: F401
except ImportError:

    class _RunOnce:
        def __call__(self, fn, *args, **kwargs):
            return fn(*args, **kwargs)

        def pedantic(self, fn, args=(), kwargs=None, rounds=1, iterations=1, **_):
            return fn(*args, **(kwargs or {}))

    @pytest.fixture
    def benchmark():
        return _RunOnce()
