"""Faults: a training process killed with SIGKILL resumes from its last checkpoint to the same result as an
uninterrupted run; checkpoints are atomic, versioned, tied to their config and dataset, and never unpickle code.
"""
from __future__ import annotations

import errno
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _mmrec import small_config, subprocess_env, write_mmrec  # noqa: E402

from motorec.train.checkpoint import FORMAT_VERSION, CheckpointError, WriteError, load_checkpoint, save_checkpoint  # noqa: E402

RESULT_KEYS = ("valid", "test", "best_epoch", "epochs_run")


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
def test_sigkill_mid_epoch_then_resume_gives_identical_metrics(tmp_path, capsys):
    """Kill MoToRec training (pre-training + joint: EMA codebooks, dead-code re-seeding, kNN graphs, every RNG)
    right after its first checkpoint lands, resume, and compare with an uninterrupted run of the same seed."""
    from motorec.cli import main

    data = write_mmrec(tmp_path / "data", num_users=90, num_items=60, num_interactions=1000)
    # dead_code_window is 20 steps: with ~25 steps an epoch, re-seeding happens on both sides of the kill.
    cfg = small_config(tmp_path / "cfg.yaml", motorec={"ema": True}, train={"epochs": 3, "pretrain_epochs": 1,
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
    if isinstance(b, (list, tuple)):  # e.g. MoToRec's snapshots
        return isinstance(a, (list, tuple)) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
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
    with pytest.raises(WriteError, match=r"cannot write .*last\.pt: disk full"):
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


# ---------------------------------------------------------------------------------------------- full disk
class _FullDisk(io.RawIOBase):
    """A file that takes ``budget`` bytes, then fails as a full disk does (ENOSPC)."""

    def __init__(self, f, budget: int) -> None:
        self.f, self.left = f, budget

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        if len(b) > self.left:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.left -= len(b)
        return self.f.write(b)


def _full_disk_from(monkeypatch, nth: int) -> None:
    """From the ``nth`` checkpoint write on (1-based), torch.save streams into a disk with 1 kB left: the real
    serializer fails mid-file (a RuntimeError around the OSError, as on a real full disk)."""
    real_save, calls = torch.save, []

    def save(obj, f, *a, **k):
        calls.append(1)
        return real_save(obj, _FullDisk(f, 1000) if len(calls) >= nth else f, *a, **k)

    monkeypatch.setattr(torch, "save", save)


@pytest.mark.parametrize("resume", [False, True], ids=["train", "resume"])
def test_full_disk_during_train_is_one_line_and_keeps_the_last_checkpoint(tmp_path, capsys, monkeypatch, resume):
    from motorec.cli import main

    data = write_mmrec(tmp_path / "data", num_users=40, num_items=30, num_interactions=400)
    out = tmp_path / "run"
    args = ["train", "--data", str(data), "--model", "lightgcn", "--split", "warm", "--quiet", "--out", str(out)]
    if resume:
        assert main([*args, "--epochs", "1"]) == 0
        _full_disk_from(monkeypatch, 1)  # the resumed run's first checkpoint already fails
        rc = main([*args, "--epochs", "3", "--resume"])
    else:
        _full_disk_from(monkeypatch, 2)  # epoch 1's checkpoint lands, epoch 2's does not
        rc = main([*args, "--epochs", "3"])
    ckpt = out / "checkpoints" / "lightgcn" / "last.pt"
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1
    assert err == [f"motorec: error: cannot write {ckpt}: No space left on device"], err
    monkeypatch.undo()
    assert load_checkpoint(ckpt)["epoch"] == 1, "the previous checkpoint must stay loadable"
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["last.pt"], "the temporary file must be removed"
    # room again: the run continues from the surviving checkpoint
    assert main([*args, "--epochs", "3", "--resume"]) == 0
    assert load_checkpoint(ckpt)["epoch"] == 3


def test_run_dir_files_resume_check_and_failed_writes(tmp_path, monkeypatch):
    from motorec.config import Config
    from motorec.train import RunDir, WriteError
    from motorec.train.checkpoint import CheckpointError as CkErr

    run = RunDir(tmp_path / "r")
    cfg = Config().replace(train={"epochs": 2})
    with pytest.raises(CkErr, match="not a motorec run directory"):
        run.read_info()
    info = {"data": None, "dataset": "x", "split": "cold", "data_seed": 0, "models": ["lightgcn", "motorec"]}
    run.prepare(cfg, info, resume=False)
    assert run.read_info() == info and Config.load(run.config_path) == cfg
    assert run.checkpoint("motorec") == run.path / "checkpoints" / "motorec" / "last.pt"
    assert run.trained_models() == [] and run.read_metrics() == {}
    save_checkpoint({"epoch": 1}, run.checkpoint("motorec"))
    assert run.trained_models() == ["motorec"]
    # resuming with other settings is refused once, here, naming every difference; the epoch budget may change
    run.prepare(cfg.replace(train={"epochs": 9}), info, resume=True)
    other = cfg.replace(model={"dim": 8}, train={"lr": 0.01})
    with pytest.raises(CkErr, match=r"run '.*r' was written with another configuration \(model 'motorec': "
                                    r"model.dim: 64 -> 8; train.lr: 0.001 -> 0.01\)"):
        run.prepare(other, info, resume=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(CkErr, match="exists and is not a directory"):
        RunDir(tmp_path / "file").prepare(cfg, info, resume=False)
    # a full disk: the write names the file and the cause, the previous metrics stay, no temp file is left
    run.write_metrics({"lightgcn": {"best_epoch": 1}})
    real_fdopen = os.fdopen
    monkeypatch.setattr(os, "fdopen", lambda fd, *a, **k: _FullDisk(real_fdopen(fd, *a, **k), 10))
    with pytest.raises(WriteError, match=rf"cannot write {re.escape(str(run.metrics_path))}: No space left on device"):
        run.write_metrics({"lightgcn": {"best_epoch": 2, "more": "x" * 100}})
    monkeypatch.undo()
    assert run.read_metrics() == {"lightgcn": {"best_epoch": 1}}
    assert sorted(p.name for p in run.path.iterdir()) == ["checkpoints", "config.yaml", "metrics.json", "run.json"]
