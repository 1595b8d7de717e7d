#!/usr/bin/env bash
# Rewrites .ci/constraints.txt from what the registry serves today: a fresh venv outside the checkout, the same
# installs as .ci/run without constraints (torch==2.13.0 first, .ci/requirements.txt, recbole --no-deps; they
# cover motorec's own dependencies and [test] extra), and its `pip freeze --all`. Review the diff, run
# `bash .ci/run` with it, and commit the file with the green run. See .ci/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
TMP=$(mktemp -d /tmp/motorec-constraints.XXXXXX)
trap 'rm -rf "$TMP"' EXIT

python3 -m venv "$TMP/venv"
# shellcheck disable=SC1091
. "$TMP/venv/bin/activate"
python -m pip install -q --upgrade pip
python -m pip install -q torch==2.13.0
python -m pip install -q -r .ci/requirements.txt
python -m pip install -q --no-deps recbole==1.2.1

{
    echo "# Exact versions for .ci/run (pip install -c). Written by .ci/refresh_constraints.sh: do not edit by hand."
    echo "# python $(python -c 'import platform; print(platform.python_version())');" \
         "torch pinned without its local label."
    python -m pip freeze --all --exclude-editable \
        | grep -viE '^(motorec([=@ ]|$)|#|-e )' \
        | sed -E 's/^torch==.*/torch==2.13.0/' \
        | LC_ALL=C sort -f
} > "$TMP/constraints.txt"
grep -q '^torch==2.13.0$' "$TMP/constraints.txt" || { echo "no torch==2.13.0 in the freeze" >&2; exit 1; }
mv "$TMP/constraints.txt" "$ROOT/.ci/constraints.txt"
git -C "$ROOT" --no-pager diff --stat -- .ci/constraints.txt || true
echo "wrote $ROOT/.ci/constraints.txt ($(grep -vc '^#' "$ROOT/.ci/constraints.txt") pins)"
