#!/usr/bin/env bash
# The package a user installs, checked outside the source tree: build an sdist and a wheel (with motorec._C),
# check what they hold, install the wheel with its [text] extra into a fresh venv in a temp dir (torch==2.13.0
# first, so that pip never resolves torch to a CUDA build), then from a temp dir: import with _C loaded, one
# LightGCN epoch on the bundled MovieLens-100k through the console script (its text features encoded there, in
# an empty cache: the Hugging Face `kernels` distribution that transformers imports is installed beside
# motorec.kernels), and the compiled ops against the references.
#
# Run by .ci/run after the editable build, from the active CI venv (which has torch, setuptools, wheel and
# `build`): the wheel build reuses that build's objects in build/ (ninja: link only), so this takes a few
# minutes, most of it the fresh venv's installs. Alone: `bash .ci/wheel_check.sh` from a venv with torch,
# `build` and the project's build requirements. MOTOREC_WHEEL_TMP keeps the temp dir (default: removed).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
TMP=${MOTOREC_WHEEL_TMP:-$(mktemp -d /tmp/motorec-wheel.XXXXXX)}
mkdir -p "$TMP"
[ -n "${MOTOREC_WHEEL_TMP:-}" ] || trap 'rm -rf "$TMP"' EXIT
case "$TMP" in "$ROOT"/*) echo "MOTOREC_WHEEL_TMP must be outside the checkout" >&2; exit 1;; esac
T0=$(date +%s)
PINS=(-c "$ROOT/.ci/constraints.txt")  # the versions .ci/run installs (.ci/README.md)
step() { printf '\n---- wheel: %s (%ss) ----\n' "$*" "$(( $(date +%s) - T0 ))"; }

step "python -m build --no-isolation (sdist + wheel, the active venv's torch)"
python -m pip install -q "${PINS[@]}" build
MOTOREC_WITH_CUDA=0 python -m build --no-isolation --sdist --wheel --outdir "$TMP/dist" . > "$TMP/build.log" 2>&1 \
    || { tail -40 "$TMP/build.log"; exit 1; }
ls -l "$TMP/dist"
WHEEL=$(ls "$TMP"/dist/motorec-*.whl)
SDIST=$(ls "$TMP"/dist/motorec-*.tar.gz)

step "contents"
python - "$WHEEL" "$SDIST" <<'EOF'
import sys, tarfile, zipfile
wheel, sdist = sys.argv[1], sys.argv[2]
names = zipfile.ZipFile(wheel).namelist()
need = ["motorec/__init__.py", "motorec/kernels/__init__.py", "motorec/kernels/residual_quantize.py",
        "motorec/kernels/code_usage.py", "motorec/cli.py", "motorec/ops/__init__.py"]
missing = [n for n in need if n not in names]
assert not missing, f"wheel lacks {missing}"
assert any(n.startswith("motorec/_C") and n.endswith(".so") for n in names), "wheel has no compiled motorec/_C*.so"
stray = sorted({n.split("/")[0] for n in names} - {"motorec"} - {n.split("/")[0] for n in names if ".dist-info" in n})
assert not stray, f"wheel installs top-level packages besides motorec: {stray}"
meta = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
assert "License: MIT" in meta or "License-Expression: MIT" in meta, "wheel METADATA has no MIT license"
for field in ("Classifier: License :: OSI Approved :: MIT License", "Requires-Dist: torch", "Provides-Extra: bench", "Classifier: ",
              "Requires-Python: >=3.10", "Description-Content-Type: text/markdown",
              "Project-URL: Paper, https://arxiv.org/abs/2602.11062"):
    assert field in meta, f"wheel METADATA lacks {field!r}"
src = tarfile.open(sdist).getnames()
# the sdist keeps the checkout's layout: kernels/ is a plain folder (an __init__.py there made it a package
# named `kernels` that shadowed the distribution of that name), motorec/kernels/__init__.py the package
for n in ("csrc/ops.cpp", "CMakeLists.txt", "LICENSE", "kernels/residual_quantize.py", "kernels/code_usage.py",
          "motorec/kernels/__init__.py", "setup.py", "pyproject.toml"):
    assert any(s.endswith("/" + n) for s in src), f"sdist lacks {n}"
top = {s.split("/", 1)[1] for s in src if s.count("/") >= 1}
assert "kernels/__init__.py" not in top, "sdist has kernels/__init__.py: a top-level package named kernels"
assert not any(n.startswith("kernels/") for n in names), "wheel installs a top-level kernels/"
print(f"wheel: {len(names)} files incl. motorec/_C and motorec/kernels; sdist: {len(src)} files incl. csrc/")
EOF

step "fresh venv outside the checkout, torch==2.13.0 first, then the wheel"
python3 -m venv "$TMP/venv"
VPY="$TMP/venv/bin/python"
"$VPY" -m pip install -q "${PINS[@]}" --upgrade pip
"$VPY" -m pip install -q "${PINS[@]}" torch==2.13.0
"$VPY" -m pip install -q "${PINS[@]}" "$WHEEL[text]"
# MovieLens-100k ships inside recbole's wheel; --no-deps keeps its heavy dependencies out.
"$VPY" -m pip install -q "${PINS[@]}" --no-deps recbole==1.2.1
"$VPY" -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__; print('torch', torch.__version__)"
"$TMP/venv/bin/pip" show motorec

cd "$TMP"  # nothing of the checkout on sys.path from here on
step "import motorec with _C loaded, from the installed wheel"
"$VPY" - "$TMP/venv" <<'EOF'
import importlib.metadata as md, importlib.util, os, sys
import motorec
from motorec import _ext
venv = os.path.realpath(sys.argv[1])
assert os.path.realpath(motorec.__file__).startswith(venv), f"motorec imported from {motorec.__file__}, not the venv"
assert _ext.HAS_C, f"motorec._C did not load: {_ext.C_REASON}"
assert md.version("motorec") == motorec.__version__, (md.version("motorec"), motorec.__version__)
assert importlib.util.find_spec("motorec.kernels") is not None
# `kernels`, when installed (transformers pulls it in), is that distribution's package, never motorec's
ks = importlib.util.find_spec("kernels")
if ks is not None:
    theirs = [f for f in md.distribution("kernels").files if f.parts == ("kernels", "__init__.py")]
    assert theirs and os.path.realpath(ks.origin) == os.path.realpath(theirs[0].locate()), f"kernels is {ks.origin}"
rq = importlib.util.find_spec("motorec.kernels.residual_quantize")  # located, not imported: triton is optional
assert rq is not None and os.path.realpath(rq.origin).startswith(venv), f"motorec.kernels.residual_quantize: {rq}"
print(motorec.ops.explain())
print("motorec", motorec.__version__, "from", os.path.dirname(motorec.__file__))
EOF

step "motorec train --model lightgcn --epochs 1 (bundled MovieLens-100k)"
MOTOREC_CACHE="$TMP/cache" "$TMP/venv/bin/motorec" train --model lightgcn --epochs 1 --out "$TMP/run" --quiet \
    --threads 2
test -s "$TMP/run/metrics.json" || { echo "motorec train wrote no metrics.json" >&2; exit 1; }
ls "$TMP"/cache/ml-100k-text-*.npy > /dev/null || { echo "no text features were encoded into $TMP/cache" >&2; exit 1; }

step "compiled ops against the references"
"$VPY" - <<'EOF'
import torch
from motorec import Graph, ops
from motorec.reference import propagate as rp, residual_quantize as rq, spmm as rs
g0 = torch.Generator().manual_seed(0)
users, items = torch.randint(0, 300, (5000,), generator=g0), torch.randint(0, 200, (5000,), generator=g0)
g = Graph.from_interactions(users, items, 300, 200)
x = torch.randn(g.num_rows, 37, generator=g0, dtype=torch.float64)
for name, out, ref in (
        ("spmm", ops.spmm(g, x.float(), backend="cpu"), rs.spmm(g.rowptr, g.col, g.val.double(), x)),
        ("propagate", ops.propagate(g, x.float(), 3, backend="cpu"),
         rp.propagate(g.rowptr, g.col, g.val.double(), x, 3))):
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)
    print(name, "cpu backend == reference")
xq, cb = torch.randn(1000, 24, generator=g0), torch.randn(3, 64, 24, generator=g0)
codes, q, rsq = ops.residual_quantize(xq, cb, backend="cpu")
rcodes, rqz, rrsq = rq.residual_quantize_forward(xq.double(), cb.double())
assert (codes != rcodes).float().mean() < 0.01, "codes differ from the float64 reference beyond near ties"
same = (codes == rcodes).all(1)
torch.testing.assert_close(q[same].double(), rqz[same], atol=1e-4, rtol=1e-4)
print("residual_quantize cpu backend == reference on", int(same.sum()), "of 1000 rows (the rest near ties)")
EOF
step "done"
