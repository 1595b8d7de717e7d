#!/usr/bin/env bash
# The frozen report's commands (../PLAN.md), run from a worktree of the report's commit 09da6d2.
# Usage: REPORT_DIR=/work/report VENV=/work/main/.venv bash run.sh
# First time on a machine: git worktree add -f "$REPORT_DIR" 09da6d2; build motorec/_C there
# (python setup.py build_ext --inplace, with the venv active); copy ../runs/* into "$REPORT_DIR"/ so that finished
# runs are skipped. Rerunning it resumes: `motorec compare` skips finished runs and resumes interrupted ones.
set -euo pipefail
REPORT_DIR=${REPORT_DIR:-/work/report}
VENV=${VENV:-/work/main/.venv}
cd "$REPORT_DIR"
. "$VENV/bin/activate"
export PYTHONPATH="$REPORT_DIR" OMP_NUM_THREADS=1
python -c "import motorec, sys; assert motorec.__file__.startswith('$REPORT_DIR/'), motorec.__file__; from motorec import _ext; assert _ext.HAS_C"
test "$(git rev-parse --short=7 HEAD)" = 09da6d2
echo "start $(date -u +%FT%TZ)"
python -m motorec compare --out report-ml100k --draws 10 --draws-from 5 --tune --tune-reference --ablations --jobs 2 --quiet \
  --model motorec --model lightgcn_content --model aldi --model knn --model lightgcn --model content \
  --model aldi_published --model dropoutnet --model heater --model clcrec --model gar \
  --draws-for lightgcn=5,content=5,aldi_published=5,dropoutnet=5,heater=5,clcrec=5,gar=5,ablations=5
for n in 1 2 3; do for s in 0 1 2; do
  python -m motorec compare --out report-synthetic/noise$n-seed$s --data synthetic:noise=$n,seed=$s --draws 3 --jobs 2 --quiet \
    --model motorec --model lightgcn_content --model aldi --model knn
done; done
python -m motorec compare --collect report-ml100k report-synthetic/* --out report-collected
echo "done $(date -u +%FT%TZ)"
