"""Small MMRec folders with chosen defects, for the bad-input tests of the data loaders
(``tests/data/test_data_bad_input.py``) and of the CLI (``tests/cli/test_cli_bad_input.py``)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

GOOD_INTER = "userID\titemID\tx_label\n" + "".join(
    f"{u}\t{i}\t{0 if (u + i) % 3 else 1 + (u % 2)}\n" for u in range(6) for i in range(8))


def mmrec_folder(root: Path, name: str, inter, feats=None) -> Path:
    """``root/name`` holding ``name.inter`` with the text ``inter`` (none when None) and ``<m>_feat.npy`` per
    entry of ``feats`` (default: image and text features for 8 items)."""
    d = root / name
    d.mkdir()
    if inter is not None:
        (d / f"{name}.inter").write_text(inter)
    g = torch.Generator().manual_seed(7)
    if feats is None:
        feats = {"image": torch.rand(8, 5, generator=g).numpy(), "text": torch.rand(8, 3, generator=g).numpy()}
    for m, a in feats.items():
        np.save(d / f"{m}_feat.npy", a)
    return d


def feat(rows: int = 8, cols: int = 5, *, bad=None):
    """Random [rows, cols] features; ``bad`` (e.g. nan) written at row rows // 2, column 1."""
    a = torch.rand(rows, cols).numpy()
    if bad is not None:
        a[rows // 2, 1] = bad
    return a
