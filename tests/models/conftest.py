"""The model-layer tests' catalog, shared by every file (built once per session)."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _model_helpers import tiny_dataset  # noqa: E402


@pytest.fixture(scope="session")
def ds():
    return tiny_dataset()
