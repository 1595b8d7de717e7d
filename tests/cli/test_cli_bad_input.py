"""Bad input at the CLI (exit code 2, one line on stderr naming what is wrong, no traceback). The data loaders'
errors themselves are tested in ``tests/data/test_data_bad_input.py``.

The other layers test their bad input beside their other tests: the public and raw ops in ``tests/ops/``
(``test_graph_ops_refuse_bad_x``, ``test_raw_op_rejects_bad_arguments``, ``test_residual_quantize_refuses``,
...), backend names and reasons in ``tests/ops/test_dispatch.py``, the ``Graph`` constructors in
``tests/data/test_graph.py``, damaged checkpoints in ``tests/train/test_faults.py``.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
from _mmrec_files import GOOD_INTER, feat, mmrec_folder  # noqa: E402


def _cli_cases(root: Path):
    """name -> (argv, expected stderr pattern). Folders and files the cases need are made here."""
    import yaml

    from motorec.train.checkpoint import save_checkpoint

    data = mmrec_folder(root, "shop", GOOD_INTER)
    bad_inter = mmrec_folder(root, "broken", "userID\titemID\tx_label\n0\t1\t0\n1\tbanana\t0\n")
    nan_feat = mmrec_folder(root, "nanfeat", GOOD_INTER, {"image": feat(bad=float("nan"))})
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
                               r"model\.dimension is not a shared model key"),
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
