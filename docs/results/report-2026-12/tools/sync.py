"""Copy the report's finished runs (every file but checkpoints) from the worktree into the repository, so that a
new machine can resume the report from them: docs/results/report-2026-12/runs/<out>/..."""
import json
import os
import shutil
from pathlib import Path

SRC = Path(os.environ.get("REPORT_DIR", "/work/report"))
DST = Path(__file__).resolve().parents[1] / "runs"


def finished(run: Path) -> bool:
    """Whether the run in directory ``run`` has test results for every model it trains."""
    try:
        m = json.loads((run / "metrics.json").read_text())
        models = json.loads((run / "run.json").read_text())["models"]
    except (OSError, ValueError, KeyError):
        return False
    return all(k in m and "test" in m[k] for k in models)


n = 0
for out in [SRC / "report-ml100k", *sorted((SRC / "report-synthetic").glob("*")), SRC / "report-collected"]:
    if not out.is_dir():
        continue
    for f in out.rglob("*"):
        if not f.is_file() or "checkpoints" in f.parts:
            continue
        run = f.parent
        if (run / "run.json").is_file():  # a file inside a run directory: only when the run is finished
            if not finished(run):
                continue
        elif f.suffix == ".log" and (run / f.stem / "run.json").is_file():  # the run's own log beside it
            if not finished(run / f.stem):
                continue
        dst = DST / f.relative_to(SRC)
        if dst.is_file() and dst.stat().st_size == f.stat().st_size and dst.stat().st_mtime >= f.stat().st_mtime:
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, dst)
        n += 1
print(f"synced {n} files")
