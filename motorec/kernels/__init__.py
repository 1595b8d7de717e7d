"""motorec's Triton kernels, one module per op (``residual_quantize``, ``code_usage``), imported as
``motorec.kernels.<op>`` and never as a top-level ``kernels`` package.

A wheel holds the modules beside this file (``setup.py`` copies them in). In a source checkout (``pip install -e
.``) they stay in the repository's top-level ``kernels/`` folder, which on purpose has no ``__init__.py``: with the
checkout's root on ``sys.path`` (``python -c`` or ``python -m`` started there, pytest's default import mode) a
regular package there named ``kernels`` shadowed the unrelated ``kernels`` distribution that transformers imports.
So in a checkout this package adds that folder to its own search path, and nothing else can import it.
"""
from pathlib import Path

_checkout = Path(__file__).resolve().parents[2]
# only the checkout this file belongs to (its C++ sources beside it), never an installed `kernels` distribution
if (_checkout / "csrc" / "ops.cpp").is_file() and (_checkout / "kernels" / "residual_quantize.py").is_file():
    __path__.append(str(_checkout / "kernels"))  # noqa: F821 - a package's own __path__
