"""Continue a finished `motorec compare` run with a larger early-stopping patience.

Training with patience P > 20 is identical to the patience-20 run up to the epoch where patience 20 stopped it
(patience only decides when to stop), so resuming the stopped run's last checkpoint with `stopped` cleared and
`train.patience: P` gives exactly the patience-P run, at the cost of the extra epochs only.
usage: extend.py SRC_OUT DST_OUT DRAW MODEL PATIENCE
"""
import shutil
import subprocess
import sys
from pathlib import Path

import torch
import yaml

src, dst, draw, model, patience = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
run = Path(f"runs/draw{draw}_seed0/{model}")
s, d = src / run, dst / run
if (d / "metrics.json").exists() and (d / "extended.ok").exists():
    sys.exit(0)
if d.exists():
    shutil.rmtree(d)
shutil.copytree(s, d)
(d / "metrics.json").unlink()
ck = d / "checkpoints" / model / "last.pt"
state = torch.load(ck, map_location="cpu", weights_only=False)
state["stopped"] = False
torch.save(state, ck)
cfg = yaml.safe_load((d / "config.yaml").read_text())
cfg["train"]["patience"] = patience
yml = dst / f"draw{draw}_{model}_p{patience}.yaml"
yml.write_text(yaml.safe_dump(cfg))
cmd = [sys.executable, "-m", "motorec", "train", "--split-seed", str(draw), "--seed", "0", "--out", str(d),
       "--threads", "1", "--quiet", "--model", model, "--config", str(yml), "--resume"]
with open(d.parent / f"{model}.p{patience}.log", "w") as fh:
    rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT).returncode
if rc == 0:
    (d / "extended.ok").write_text("ok\n")
sys.exit(rc)
