"""Faults: a training process killed with SIGKILL resumes from its last checkpoint to the same result as an
uninterrupted run; checkpoints are atomic, versioned, tied to their config and dataset, and never unpickle code.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _mmrec import small_config, subprocess_env, write_mmrec  # noqa: E402

from motorec.train.checkpoint import FORMAT_VERSION, CheckpointError, load_checkpoint, save_checkpoint  # noqa: E402

RESULT_KEYS = ("valid", "test", "best_epoch", "epochs_run")


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
def test_sigkill_mid_epoch_then_resume_gives_identical_metrics(tmp_path, capsys):
    """Kill MoToRec training (pre-training + joint: EMA codebooks, dead-code re-seeding, kNN graphs, every RNG)
    right after its first checkpoint lands, resume, and compare with an uninterrupted run of the same seed."""
    from motorec.cli import main

    data = write_mmrec(tmp_path / "data", num_users=90, num_items=60, num_interactions=1000)
    # dead_code_window is 20 steps: with ~25 steps an epoch, re-seeding happens on both sides of the kill.
    cfg = small_config(tmp_path / "cfg.yaml", model={"ema": True}, train={"epochs": 3, "pretrain_epochs": 1,
                                                                         "batch_size": 32})
    args = ["train", "--data", str(data), "--config", str(cfg), "--split", "warm", "--model", "motorec", "--quiet"]
    killed = tmp_path / "killed"
    ckpt = killed / "checkpoints" / "motorec" / "last.pt"
    proc = subprocess.Popen([sys.executable, "-m", "motorec", *args, "--out", str(killed)], cwd=tmp_path,
                            env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 180
        while not ckpt.exists():
            assert proc.poll() is None, f"training exited early ({proc.returncode}): {proc.stderr.read().decode()[-2000:]}"
            assert time.monotonic() < deadline, "no checkpoint after 180 s"
            time.sleep(0.02)
        # The next epoch is running now (a few hundred ms each): kill it in the middle.
        time.sleep(0.1)
        assert proc.poll() is None, "training finished before it could be killed; make the run longer"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    state = load_checkpoint(ckpt)  # whatever moment the kill hit, last.pt is whole
    assert 1 <= state["epoch"] < 4, f"killed at epoch {state['epoch']}: not mid-run"
    assert not state["stopped"]
    leftovers = [p.name for p in ckpt.parent.iterdir() if p.name != "last.pt"]  # a torn temp file may remain;
    assert all(n.startswith(".last.pt.") and n.endswith(".tmp") for n in leftovers), leftovers  # never loaded

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the killed subprocess (OMP_NUM_THREADS=1): the same summation order
    try:
        assert main([*args, "--out", str(killed), "--resume"]) == 0
        assert main([*args, "--out", str(tmp_path / "full")]) == 0
    finally:
        torch.set_num_threads(threads)
    capsys.readouterr()
    resumed = json.loads((killed / "metrics.json").read_text())["motorec"]
    full = json.loads((tmp_path / "full" / "metrics.json").read_text())["motorec"]
    for k in RESULT_KEYS:
        assert resumed[k] == full[k], f"{k}: resumed {resumed[k]} != uninterrupted {full[k]}"
    a = load_checkpoint(ckpt)
    b = load_checkpoint(tmp_path / "full" / "checkpoints" / "motorec" / "last.pt")
    assert a["model"].keys() == b["model"].keys()
    for k, v in b["model"].items():
        assert _same(a["model"][k], v), f"final {k} differs after resume"


def _same(a, b) -> bool:
    """Exact equality of tensors, numbers and the nested dicts of module extra state (e.g. kNN graphs)."""
    if isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and torch.equal(a, b)
    if isinstance(b, dict):
        return isinstance(a, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in b)
    return a == b


# ---------------------------------------------------------------------------------------------- checkpoints
def _tiny_run(tmp_path, **train):
    from motorec.config import Config
    from motorec.data import synthetic
    from motorec.train import Trainer

    ds = synthetic(40, 30, num_interactions=300, modalities={"image": 6}, seed=4, split="warm")
    cfg = Config.from_dict({"model": {"name": "lightgcn", "dim": 8},
                            "train": {"epochs": 1, "batch_size": 64, "patience": 0, **train}})
    return cfg, ds, Trainer


def test_checkpoint_from_another_config_or_dataset_is_refused(tmp_path):
    cfg, ds, Trainer = _tiny_run(tmp_path)
    Trainer(cfg, ds, checkpoint_dir=tmp_path, quiet=True).fit()
    other_cfg = cfg.replace(train={"lr": 0.05})
    with pytest.raises(CheckpointError, match=r"last\.pt' was written with another configuration"):
        Trainer(other_cfg, ds, checkpoint_dir=tmp_path, quiet=True).fit(resume=True)
    from motorec.data import synthetic

    other_ds = synthetic(40, 30, num_interactions=300, modalities={"image": 6}, seed=5, split="warm")
    with pytest.raises(CheckpointError, match=r"last\.pt' was written for another dataset or split"):
        Trainer(cfg, other_ds, checkpoint_dir=tmp_path, quiet=True).fit(resume=True)
    # The epoch budget is not part of the fingerprint: a longer run may continue a shorter one.
    Trainer(cfg.replace(train={"epochs": 2}), ds, checkpoint_dir=tmp_path, quiet=True).fit(resume=True)
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 2


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"epoch": 1, "w": torch.arange(5.0)}, path)

    def torn_save(obj, f, *a, **k):
        f.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"epoch": 2, "w": torch.zeros(5)}, path)
    monkeypatch.undo()
    state = load_checkpoint(path)
    assert state["epoch"] == 1 and torch.equal(state["w"], torch.arange(5.0)), "the old checkpoint must survive"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"], "the temporary file must be removed"


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ.get('MOTOREC_EVIL_MARKER', '/nonexistent/x')}",))


def test_checkpoint_load_never_executes_code(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("MOTOREC_EVIL_MARKER", str(marker))
    path = tmp_path / "evil.pt"
    torch.save({"format_version": FORMAT_VERSION, "payload": _Evil()}, path)
    with pytest.raises(CheckpointError, match=r"evil\.pt' is damaged or not a motorec checkpoint \(UnpicklingError"):
        load_checkpoint(path)
    assert not marker.exists(), "weights_only=True must refuse to call os.system"


@pytest.mark.parametrize(
    "content,match",
    [
        (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), r"is damaged or not a motorec checkpoint"),
        (lambda p: p.write_bytes(b""), r"is damaged or not a motorec checkpoint"),
        (lambda p: torch.save({"epoch": 3}, p), r"is not a motorec checkpoint \(no format_version\)"),
        (lambda p: torch.save({"format_version": 999}, p), r"has format version 999, this motorec reads version"),
        (lambda p: p.unlink(), r"does not exist"),
    ],
    ids=["truncated", "empty", "no-version", "future-version", "missing"],
)
def test_bad_checkpoint_files_are_refused(tmp_path, content, match):
    path = tmp_path / "last.pt"
    save_checkpoint({"epoch": 1, "w": torch.randn(300)}, path)
    content(path)
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(path)


def test_checkpoint_of_the_old_format_is_refused_in_one_line(tmp_path, capsys):
    """A version-1 checkpoint (before the model's state became one state_dict: separate "extra" kNN graphs,
    flat parameter names) is refused with a reason, by the loader and in one line by the CLI."""
    old = {"format_version": 1, "model": {"user_emb": torch.randn(4, 2), "item_emb": torch.randn(3, 2),
                                          "tokenizers.image.quantizer.codebooks": torch.randn(2, 8, 2)},
           "extra": {"knn.image.rowptr": torch.zeros(4, dtype=torch.long)}, "epoch": 3, "best_state": None,
           "config": {}, "dataset_fingerprint": "x"}
    path = tmp_path / "last.pt"
    torch.save(old, path)
    with pytest.raises(CheckpointError, match=r"format version 1, this motorec reads version 2 \(written before "
                                              r"model state moved into one state_dict"):
        load_checkpoint(path)
    from motorec.cli import main

    data = write_mmrec(tmp_path / "data", num_users=30, num_items=20, num_interactions=200)
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "--model", "lightgcn", "--epochs", "1", "--split", "warm",
                 "--quiet", "--out", str(run)]) == 0
    torch.save(old, run / "checkpoints" / "lightgcn" / "last.pt")
    capsys.readouterr()
    assert main(["evaluate", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "format version 1" in err[0] and "retrain" in err[0], err
