"""Development study: every model plain against wrapped (snapshot ensemble of 20 epochs + decoupled warm scorer),
on MovieLens-100k development draws, to choose the default of the `wrappers:` section.

Usage (one run per call, so runs can go two at a time):
    python docs/results/2026-12-06-wrapper-defaults/run.py MODEL DRAW plain|wrapped OUT.json
Each run: default config, seed 0, one thread; records validation and test Recall@20 per setting, the selected
epochs and the wall time.
"""
import json
import sys
import time

import torch

from motorec.config import Config
from motorec.data import load_movielens100k
from motorec.train import Trainer

model, draw, kind, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
torch.set_num_threads(1)
ds = load_movielens100k(seed=draw)
wrappers = {"ensemble": 20, "decoupled": True} if kind == "wrapped" else {"ensemble": 1, "decoupled": False}
cfg = Config().replace(model={"name": model}, wrappers=wrappers, data={"seed": draw})
t0 = time.time()
r = Trainer(cfg, ds, quiet=True).fit()
row = {"model": model, "draw": draw, "kind": kind, "seconds": time.time() - t0, "best_epoch": r["best_epoch"],
       "selected_epochs": r["selected_epochs"], "epochs_run": r["epochs_run"],
       "seconds_per_epoch": r["seconds_per_epoch"],
       **{f"{split}_{st}": r[split][st]["recall@20"] for split in ("valid", "test") for st in ("cold", "warm", "hybrid")}}
with open(out, "w") as f:
    json.dump(row, f)
print(json.dumps(row))
