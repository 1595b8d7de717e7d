"""Bad input at the data layer's boundary: the MMRec loader and the ``Dataset`` constructor. Each case asserts
the error type AND a message naming what is wrong. The CLI's handling of the same errors (exit code 2, one line
on stderr) is tested in ``tests/cli/test_cli_bad_input.py``.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _mmrec_files import GOOD_INTER, feat, mmrec_folder  # noqa: E402


@pytest.mark.parametrize(
    "inter,feats,split,match",
    [
        ("", None, "cold", r"shop\.inter: empty file \(expected a tab-separated header"),
        ("userID\titemID\tx_label\n", None, "cold", r"no interactions after the header"),
        ("userID\titem\tx_label\n0\t1\t0\n", None, "cold", r"missing column\(s\) 'itemID' in header"),
        ("userID itemID x_label\n0 1 0\n", None, "cold", r"missing column\(s\) 'userID', 'itemID'.*tab-separated"),
        ("userID\titemID\tx_label\n0\t1\t0\n1\n", None, "cold", r"line 3 has 1 tab-separated field\(s\), expected 3"),
        ("userID\titemID\tx_label\n0\tab\t0\n", None, "cold", r"column 'itemID' has a non-integer value 'ab'"),
        ("userID\titemID\tx_label\n0\t1\t0\n-3\t2\t0\n", None, "cold", r"column 'userID' has a negative id -3 \(line 3\)"),
        (GOOD_INTER + "2\t8\t0\n", None, "cold", r"column 'itemID' has id 8 .*only 8 rows"),
        (GOOD_INTER, {"image": feat(6)}, "cold", r"column 'itemID' has id [67] .*feature files have only 6 rows"),
        (GOOD_INTER, {"image": feat(bad=float("nan"))}, "cold", r"image_feat\.npy: non-finite value nan at row 4"),
        (GOOD_INTER, {"image": feat(bad=float("inf"))}, "cold", r"image_feat\.npy: non-finite value inf at row 4"),
        (GOOD_INTER, {"image": feat(8), "text": feat(7)}, "cold", r"feature files have different row counts"),
        (GOOD_INTER, {}, "cold", r"no feature files"),
        ("userID\titemID\tx_label\n0\t1\t7\n", None, "warm", r"column 'x_label' has value 7"),
        ("userID\titemID\n0\t1\n", None, "warm", r"missing column\(s\) 'x_label'"),
        ("userID\titemID\tx_label\n" + "".join(f"{u}\t{i}\t1\n" for u in range(4) for i in range(8)), None, "warm",
         r"the training split is empty"),
        (None, None, "cold", r"no \.inter file"),
    ],
    ids=["empty-file", "header-only", "missing-column", "space-separated", "short-row", "non-integer-id",
         "negative-user", "item-out-of-range", "fewer-feature-rows", "nan-feature", "inf-feature",
         "feature-row-mismatch", "no-features", "bad-label", "warm-without-label", "empty-train-split",
         "no-inter-file"],
)
def test_load_mmrec_refuses(tmp_path, inter, feats, split, match):
    from motorec.data import DataError, load_mmrec

    folder = mmrec_folder(tmp_path, "shop", inter, feats)
    with pytest.raises(DataError, match=match):
        load_mmrec(folder, split=split)


def test_load_mmrec_refuses_missing_folder(tmp_path):
    from motorec.data import DataError, load_mmrec

    with pytest.raises(DataError, match=r"data folder not found: .*nowhere"):
        load_mmrec(tmp_path / "nowhere")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(DataError, match=r"data path is not a folder"):
        load_mmrec(tmp_path / "file.txt")


def test_dataset_refuses_bad_tensors():
    from motorec.data import DataError, Dataset

    feats = {"image": torch.rand(5, 3)}
    pairs = torch.tensor([[0, 1], [1, 2]])
    empty = torch.zeros(0, 2, dtype=torch.long)
    with pytest.raises(DataError, match=r"the training split is empty"):
        Dataset(3, 5, empty, empty, empty, feats, split="warm")
    with pytest.raises(DataError, match=r"train item id 5 is out of range for num_items=5"):
        Dataset(3, 5, torch.tensor([[0, 5]]), empty, empty, feats, split="warm")
    with pytest.raises(DataError, match=r"negative valid user id -1"):
        Dataset(3, 5, pairs, torch.tensor([[-1, 0]]), empty, feats, split="warm")
    with pytest.raises(DataError, match=r"features\['image'\] has 4 rows, expected num_items=5"):
        Dataset(3, 5, pairs, empty, empty, {"image": torch.rand(4, 3)}, split="warm")
    bad = torch.rand(5, 3)
    bad[2, 2] = float("nan")
    with pytest.raises(DataError, match=r"features\['image'\] contains NaN or Inf"):
        Dataset(3, 5, pairs, empty, empty, {"image": bad}, split="warm")
    with pytest.raises(DataError, match=r"Dataset.train must be int64, got torch.int32"):
        Dataset(3, 5, pairs.int(), empty, empty, feats, split="warm")
