import os
import random

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_everything():
    """Fresh but reproducible random inputs per test (never zeros; generators draw from these seeds)."""
    torch.manual_seed(1234)
    random.seed(1234)
    yield


@pytest.fixture
def no_backend_env(monkeypatch):
    monkeypatch.delenv("MOTOREC_BACKEND", raising=False)
    yield


def pytest_report_header(config):
    import motorec

    lines = [f"motorec {motorec.__version__}, torch {torch.__version__}, cuda available: {torch.cuda.is_available()}",
             f"MOTOREC_BACKEND={os.environ.get('MOTOREC_BACKEND', '')!r} TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET', '')!r}"]
    from motorec import _ext

    lines.append(f"motorec._C: {'loaded' if _ext.HAS_C else _ext.C_REASON}; triton: {'ok' if _ext.HAS_TRITON else _ext.TRITON_REASON}")
    return lines
