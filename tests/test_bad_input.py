"""Bad input at the user-facing boundaries: the data loaders and the CLI (exit code 2, one line on stderr, no
traceback). Each case asserts the error type AND a message naming what is wrong.

The other layers test their bad input beside their other tests: the public and raw ops in ``tests/ops/``
(``test_graph_ops_refuse_bad_x``, ``test_raw_op_rejects_bad_arguments``, ``test_residual_quantize_refuses``,
...), backend names and reasons in ``tests/test_dispatch.py``, the ``Graph`` constructors in
``tests/test_graph.py``, damaged checkpoints in ``tests/train/test_faults.py``.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------- loaders
_GOOD_INTER = "userID\titemID\tx_label\n" + "".join(
    f"{u}\t{i}\t{0 if (u + i) % 3 else 1 + (u % 2)}\n" for u in range(6) for i in range(8))


def _mmrec_folder(root: Path, name: str, inter, feats=None) -> Path:
    d = root / name
    d.mkdir()
    if inter is not None:
        (d / f"{name}.inter").write_text(inter)
    g = torch.Generator().manual_seed(7)
    if feats is None:
        feats = {"image": torch.rand(8, 5, generator=g).numpy(), "text": torch.rand(8, 3, generator=g).numpy()}
    import numpy as np

    for m, a in feats.items():
        np.save(d / f"{m}_feat.npy", a)
    return d


def _feat(rows: int = 8, cols: int = 5, *, bad=None):
    a = torch.rand(rows, cols).numpy()
    if bad is not None:
        a[rows // 2, 1] = bad
    return a


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
        (_GOOD_INTER + "2\t8\t0\n", None, "cold", r"column 'itemID' has id 8 .*only 8 rows"),
        (_GOOD_INTER, {"image": _feat(6)}, "cold", r"column 'itemID' has id [67] .*feature files have only 6 rows"),
        (_GOOD_INTER, {"image": _feat(bad=float("nan"))}, "cold", r"image_feat\.npy: non-finite value nan at row 4"),
        (_GOOD_INTER, {"image": _feat(bad=float("inf"))}, "cold", r"image_feat\.npy: non-finite value inf at row 4"),
        (_GOOD_INTER, {"image": _feat(8), "text": _feat(7)}, "cold", r"feature files have different row counts"),
        (_GOOD_INTER, {}, "cold", r"no feature files"),
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

    folder = _mmrec_folder(tmp_path, "shop", inter, feats)
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


# ---------------------------------------------------------------------------------------------- CLI
def _cli_cases(root: Path):
    """name -> (argv, expected stderr pattern). Folders and files the cases need are made here."""
    import yaml

    from motorec.train.checkpoint import save_checkpoint

    data = _mmrec_folder(root, "shop", _GOOD_INTER)
    bad_inter = _mmrec_folder(root, "broken", "userID\titemID\tx_label\n0\t1\t0\n1\tbanana\t0\n")
    nan_feat = _mmrec_folder(root, "nanfeat", _GOOD_INTER, {"image": _feat(bad=float("nan"))})
    (root / "unknown_key.yaml").write_text(yaml.safe_dump({"model": {"dimension": 64}}))
    (root / "bad_value.yaml").write_text(yaml.safe_dump({"train": {"lr": -0.5}}))
    (root / "not_yaml.yaml").write_text("model: {name: lightgcn\n  dim: [64\n")
    run = root / "run"
    ckpt = run / "checkpoints" / "lightgcn" / "last.pt"
    save_checkpoint({"epoch": 1, "w": torch.randn(2000)}, ckpt)
    ckpt.write_bytes(ckpt.read_bytes()[:700])  # truncated by a crash of some other tool
    train = ["train", "--model", "lightgcn", "--epochs", "1", "--quiet"]
    return {
        "bad-flag": (["train", "--bogus"], r"unrecognized arguments: --bogus"),
        "bad-choice": (["train", "--model", "transformer"], r"argument --model: invalid choice: 'transformer'"),
        "missing-data-folder": ([*train, "--data", str(root / "nowhere")], r"--data '.*nowhere' is not a directory"),
        "malformed-inter": ([*train, "--data", str(bad_inter), "--split", "warm"],
                            r"broken\.inter: column 'itemID' has a non-integer value 'banana'"),
        "nan-features": ([*train, "--data", str(nan_feat)], r"image_feat\.npy: non-finite value nan"),
        "config-unknown-key": ([*train, "--data", str(data), "--config", str(root / "unknown_key.yaml")],
                               r"unknown key\(s\) in model: \['dimension'\]"),
        "config-bad-value": ([*train, "--data", str(data), "--config", str(root / "bad_value.yaml")],
                             r"train\.lr must be > 0, got -0\.5"),
        "config-not-yaml": ([*train, "--data", str(data), "--config", str(root / "not_yaml.yaml")],
                            r"not_yaml\.yaml' is not valid YAML"),
        "config-missing": ([*train, "--data", str(data), "--config", str(root / "absent.yaml")],
                           r"config file '.*absent\.yaml' does not exist"),
        "negative-epochs": (["train", "--epochs", "-1", "--data", str(data)], r"train\.epochs must be >= 0, got -1"),
        "truncated-checkpoint": ([*train, "--data", str(data), "--split", "warm", "--out", str(run), "--resume"],
                                 r"last\.pt' is damaged or not a motorec checkpoint"),
        "evaluate-not-a-run": (["evaluate", str(root / "shop")], r"is not a motorec run directory"),
    }


# Run as real ``python -m motorec`` processes (exit code, stderr, no traceback from the interpreter itself);
# the other cases run ``motorec.cli.main`` in this process: the same code path without paying ~1.5 s of
# interpreter and torch start-up each.
SUBPROCESS_CASES = ("bad-flag", "missing-data-folder", "malformed-inter", "config-unknown-key", "truncated-checkpoint")
CLI_CASES = ["bad-flag", "bad-choice", "missing-data-folder", "malformed-inter", "nan-features", "config-unknown-key",
             "config-bad-value", "config-not-yaml", "config-missing", "negative-epochs", "truncated-checkpoint",
             "evaluate-not-a-run"]


@pytest.fixture(scope="module")
def cli_results(tmp_path_factory):
    """``case -> (exit code, stdout, stderr, expected pattern)``; the subprocess cases run concurrently."""
    root = tmp_path_factory.mktemp("cli")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("MOTOREC_DEBUG", None)
    cases = _cli_cases(root)
    procs = {name: subprocess.Popen([sys.executable, "-m", "motorec", *cases[name][0]], cwd=root, env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name in SUBPROCESS_CASES}
    out = {}
    for name, (argv, pattern) in cases.items():
        if name not in procs:
            out[name] = _run_main_inprocess(argv, root) + (pattern,)
    for name, p in procs.items():
        stdout, stderr = p.communicate(timeout=300)
        out[name] = (p.returncode, stdout, stderr, cases[name][1])
    return out


def _run_main_inprocess(argv, cwd):
    import contextlib
    import io

    from motorec.cli import main

    err, outs = io.StringIO(), io.StringIO()
    old = os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(outs):
            try:
                rc = main(argv)
            except SystemExit as e:  # argparse exits for --help/--version only
                rc = e.code
            except BaseException:  # an escaped exception is what this test exists to catch
                import traceback

                traceback.print_exc(file=err)
                rc = 1
    finally:
        os.chdir(old)
    return rc, outs.getvalue(), err.getvalue()


@pytest.mark.parametrize("case", CLI_CASES)
def test_cli_user_error_is_one_line_exit_2(cli_results, case):
    import re

    rc, stdout, stderr, pattern = cli_results[case]
    assert "Traceback" not in stderr, f"{case}: traceback on stderr:\n{stderr}"
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert rc == 2, f"{case}: exit code {rc}, stderr:\n{stderr}"
    assert len(lines) == 1, f"{case}: expected one line on stderr, got {len(lines)}:\n{stderr}"
    assert re.match(r"motorec( \w+)?: error: ", lines[0]), lines[0]
    assert re.search(pattern, lines[0]), f"{case}: {lines[0]!r} does not match {pattern!r}"
