"""MMRec-format loader: a valid folder loads as expected; every kind of bad input raises a one-line DataError
naming the file, column or value."""
import numpy as np
import pytest
import torch

from motorec.data import DataError, load_mmrec

HEADER = "userID\titemID\trating\ttimestamp\tx_label"


def _inter(rows, header=HEADER):
    return header + "\n" + "\n".join("\t".join(str(v) for v in r) for r in rows) + "\n"


def _rows(num_users=6, num_items=9, seed=0):
    """Every user has train interactions and a valid and a test one; ratings/timestamps are noise columns."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(num_users):
        items = rng.permutation(num_items)[:5]
        for k, i in enumerate(items):
            label = 0 if k < 3 else (1 if k == 3 else 2)
            rows.append((u, int(i), int(rng.integers(1, 6)), int(rng.integers(10**9)), label))
    return rows


def _folder(tmp_path, inter_text=None, feats=None, name="tiny"):
    d = tmp_path / name
    d.mkdir()
    if inter_text is not None:
        (d / f"{name}.inter").write_text(inter_text)
    if feats is None:
        rng = np.random.default_rng(1)
        feats = {"image": rng.normal(size=(9, 7)).astype(np.float32), "text": rng.normal(size=(9, 5))}
    for m, a in feats.items():
        np.save(d / f"{m}_feat.npy", a)
    return d


def _err(folder, **kw) -> str:
    with pytest.raises(DataError) as ei:
        load_mmrec(folder, **kw)
    msg = str(ei.value)
    assert "\n" not in msg, f"DataError message must be one line: {msg!r}"
    assert isinstance(ei.value, ValueError)
    return msg


def test_warm_split_follows_x_label(tmp_path):
    rows = _rows()
    d = load_mmrec(_folder(tmp_path, _inter(rows)), split="warm")
    assert d.name == "tiny" and d.split == "warm"
    assert d.num_users == 6 and d.num_items == 9
    assert set(d.features) == {"image", "text"}
    assert d.features["image"].shape == (9, 7) and d.features["text"].dtype == torch.float32
    for label, part in ((0, d.train), (1, d.valid), (2, d.test)):
        expected = sorted((u, i) for u, i, _, _, lab in rows if lab == label)
        assert sorted(map(tuple, part.tolist())) == expected
    assert d.cold_valid_items.numel() == 0 and d.cold_test_items.numel() == 0


def test_cold_split_ignores_x_label_and_label_column_is_optional(tmp_path):
    rows = _rows(num_users=20, num_items=9)
    with_label = load_mmrec(_folder(tmp_path, _inter(rows), name="a"), split="cold", seed=3)
    no_label = _inter([r[:2] for r in rows], header="userID\titemID")
    without = load_mmrec(_folder(tmp_path, no_label, name="b"), split="cold", seed=3)
    assert with_label.fingerprint() == without.fingerprint()
    held = torch.cat([with_label.cold_valid_items, with_label.cold_test_items])
    assert held.numel() == round(0.2 * 9)
    assert not torch.isin(with_label.train[:, 1], held).any()


def test_duplicates_crlf_extra_columns_and_unused_items(tmp_path):
    rows = _rows()
    rows.append((0, int(rows[0][1]), 5, 1, 2))  # repeat of a train pair, labelled test: stays train only
    text = _inter(rows).replace("\n", "\r\n")
    d = load_mmrec(_folder(tmp_path, text, feats={"image": np.ones((12, 3), np.float64)}), split="warm")
    assert d.num_items == 12  # items 9..11 have features but no interaction
    keys = d.train[:, 0] * 100 + d.train[:, 1]
    assert keys.unique().numel() == keys.numel()
    assert not ((d.test[:, 0] == 0) & (d.test[:, 1] == rows[0][1])).any()
    assert d.info["duplicates_removed"] == 1


def test_missing_column(tmp_path):
    text = _inter([(u, i, lab) for u, i, _, _, lab in _rows()], header="userID\titem\tx_label")
    assert "'itemID'" in _err(_folder(tmp_path, text))


def test_missing_x_label_for_warm_split(tmp_path):
    text = _inter([r[:2] for r in _rows()], header="userID\titemID")
    assert "'x_label'" in _err(_folder(tmp_path, text), split="warm")


def test_space_separated_header_is_missing_columns(tmp_path):
    text = _inter(_rows()).replace("\t", " ", 4)
    assert "missing column" in _err(_folder(tmp_path, text))


@pytest.mark.parametrize("bad", ["1.5", "abc", "", "3.0"])
def test_non_integer_id(tmp_path, bad):
    rows = [list(r) for r in _rows()]
    rows[4][1] = bad
    msg = _err(_folder(tmp_path, _inter(rows)))
    assert "non-integer" in msg and "'itemID'" in msg and repr(bad) in msg and "line 6" in msg


def test_negative_id(tmp_path):
    rows = [list(r) for r in _rows()]
    rows[2][0] = -4
    msg = _err(_folder(tmp_path, _inter(rows)))
    assert "negative" in msg and "-4" in msg and "'userID'" in msg


def test_item_id_beyond_feature_rows(tmp_path):
    rows = [list(r) for r in _rows()]
    rows[7][1] = 9  # features have 9 rows: ids 0..8
    msg = _err(_folder(tmp_path, _inter(rows)))
    assert "id 9" in msg and "9 rows" in msg


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_features(tmp_path, value):
    f = np.random.default_rng(0).normal(size=(9, 4)).astype(np.float32)
    f[5, 2] = value
    msg = _err(_folder(tmp_path, _inter(_rows()), feats={"image": f}))
    assert "image_feat.npy" in msg and "row 5" in msg and "column 2" in msg


def test_feature_row_counts_differ(tmp_path):
    feats = {"image": np.ones((9, 4), np.float32), "text": np.ones((10, 4), np.float32)}
    msg = _err(_folder(tmp_path, _inter(_rows()), feats=feats))
    assert "different row counts" in msg and "image_feat.npy: 9" in msg and "text_feat.npy: 10" in msg


def test_feature_file_not_2d_or_not_numeric(tmp_path):
    assert "2-D" in _err(_folder(tmp_path, _inter(_rows()), feats={"image": np.ones(9, np.float32)}, name="a"))
    strings = np.array([["a"]] * 9)
    assert "numeric" in _err(_folder(tmp_path, _inter(_rows()), feats={"image": strings}, name="b"))
    d = _folder(tmp_path, _inter(_rows()), feats={}, name="c")
    np.save(d / "image_feat.npy", np.array([{"x": 1}] * 9, dtype=object), allow_pickle=True)
    assert "cannot read" in _err(d)


def test_empty_training_split(tmp_path):
    rows = [(u, i, r, t, 1 if lab == 0 else lab) for u, i, r, t, lab in _rows()]
    assert "training split is empty" in _err(_folder(tmp_path, _inter(rows)), split="warm")


@pytest.mark.parametrize("label", [3, -1])
def test_x_label_out_of_range(tmp_path, label):
    rows = [list(r) for r in _rows()]
    rows[10][4] = label
    msg = _err(_folder(tmp_path, _inter(rows)))
    assert "'x_label'" in msg and f"value {label}" in msg and "line 12" in msg


def test_short_row(tmp_path):
    text = _inter(_rows()) + "3\t4\n"
    msg = _err(_folder(tmp_path, text))
    assert "line 32" in msg and "field" in msg


def test_empty_inter_and_header_only(tmp_path):
    assert "empty file" in _err(_folder(tmp_path, "\n\n", name="a"))
    assert "no interactions" in _err(_folder(tmp_path, HEADER + "\n", name="b"))


def test_folder_without_inter_or_features(tmp_path):
    assert "no .inter" in _err(_folder(tmp_path, None, name="a"))
    assert "no feature files" in _err(_folder(tmp_path, _inter(_rows()), feats={}, name="b"))


def test_folder_missing_or_a_file(tmp_path):
    assert "not found" in _err(tmp_path / "nope")
    (tmp_path / "f.txt").write_text("x")
    assert "not a folder" in _err(tmp_path / "f.txt")


def test_several_inter_files(tmp_path):
    d = _folder(tmp_path, _inter(_rows()), name="x")
    (d / "other.inter").write_text(_inter(_rows()))
    (d / "x.inter").rename(d / "y.inter")
    assert "several .inter files" in _err(d)


def test_bad_split_argument(tmp_path):
    with pytest.raises(ValueError, match="split"):
        load_mmrec(_folder(tmp_path, _inter(_rows())), split="random")
