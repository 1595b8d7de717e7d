"""CLI tests: ``python -m motorec train`` end to end in a subprocess (exit 0, output directory, metrics.json
shape), user errors (exit 2, one line, no traceback), and ``evaluate`` / ``tokenize`` on a finished run."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))
from _mmrec import small_config, subprocess_env, write_mmrec  # noqa: E402

KEYS = ("cold", "warm", "hybrid", "hybrid_warm", "hybrid_cold")
METRICS = ("recall@10", "ndcg@10", "recall@20", "ndcg@20")


def _motorec(args, cwd, timeout=300):
    return subprocess.run([sys.executable, "-m", "motorec", *map(str, args)], cwd=cwd, env=subprocess_env(),
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One finished ``motorec train`` run (cold split, two models, one epoch) shared by several tests."""
    tmp = tmp_path_factory.mktemp("cli")
    data = write_mmrec(tmp / "data")
    cfg = small_config(tmp / "cfg.yaml", train={"pretrain_epochs": 1})
    out = tmp / "out"
    p = _motorec(["train", "--data", data, "--epochs", 1, "--model", "lightgcn", "--model", "motorec",
                  "--config", cfg, "--out", out, "--quiet", "--seed", 3, "--threads", 1], tmp)
    return tmp, data, cfg, out, p


def test_train_subprocess_writes_run_directory(run):
    tmp, data, cfg, out, p = run
    assert p.returncode == 0, p.stderr[-3000:]
    assert "test results" in p.stdout and "motorec" in p.stdout and "lightgcn" in p.stdout
    m = json.loads((out / "metrics.json").read_text())
    assert set(m) == {"lightgcn", "motorec"}
    for model in m:
        for split in ("valid", "test"):
            assert list(m[model][split]) == list(KEYS)
            for g in KEYS:
                for k in METRICS:
                    v = m[model][split][g][k]
                    assert isinstance(v, float) and 0.0 <= v <= 1.0
        assert m[model]["seconds_per_epoch"] > 0
        assert m[model]["early_stopped"] is False  # one epoch, patience 0: the cap ended it, as asked
        assert (out / "checkpoints" / model / "last.pt").is_file()
    assert m["motorec"]["test"]["cold"]["num_users"] > 0  # the default split is the cold-start split
    info = json.loads((out / "run.json").read_text())
    assert info["split"] == "cold" and Path(info["data"]) == Path(data).resolve()
    import yaml

    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["train"]["epochs"] == 1 and saved["train"]["seed"] == 3 and saved["model"]["dim"] == 16
    log = (out / "train.log").read_text()
    assert "motorec epoch" in log and "lightgcn epoch" in log
    assert "reached the epoch cap" not in p.stdout + log  # patience 0: no early stopping was asked for


def test_train_notes_models_the_epoch_cap_cut_off(tmp_path):
    data = write_mmrec(tmp_path / "data")
    cfg = small_config(tmp_path / "cfg.yaml", train={"patience": 5})
    p = _motorec(["train", "--data", data, "--epochs", 2, "--model", "lightgcn", "--config", cfg,
                  "--out", tmp_path / "out", "--quiet", "--threads", 1], tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "note: lightgcn reached the epoch cap (2) before early stopping" in p.stdout
    assert "lightgcn: reached the epoch cap (2 joint epochs)" in (tmp_path / "out" / "train.log").read_text()


@pytest.mark.parametrize("args, match", [
    (["train", "--no-such-flag"], "unrecognized arguments"),
    (["train", "--model", "nope"], "invalid choice"),
    (["train", "--epochs", "many"], "invalid int value"),
    (["train", "--threads", "0"], "--threads must be >= 1"),
    (["train", "--data", "synthetic:noise=x"], "noise must be a number"),
    (["compare", "--out", "o", "--data", "synthetic:size=3"], "keys among"),
], ids=["unknown-flag", "bad-model", "bad-int", "bad-threads", "bad-synthetic", "compare-bad-synthetic"])
def test_bad_flags_exit_2_one_line(tmp_path, args, match):
    p = _motorec(args, tmp_path)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and match in lines[0] and "Traceback" not in p.stderr, p.stderr


def test_bad_data_exit_2_one_line(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "image_feat.npy").write_bytes(b"")
    p = _motorec(["train", "--data", empty, "--epochs", 1, "--model", "lightgcn", "--out", tmp_path / "o"], tmp_path)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("motorec: error:") and "Traceback" not in p.stderr


@pytest.mark.parametrize("case", ["missing-dir", "bad-config", "bad-config-key", "resume-without-out", "bad-device",
                                  "nan-features"])
def test_user_errors_in_process(tmp_path, capsys, case):
    from motorec.cli import main

    data = write_mmrec(tmp_path / "data")
    args = ["train", "--data", str(data), "--model", "lightgcn", "--epochs", "1", "--quiet",
            "--out", str(tmp_path / "o")]
    if case == "missing-dir":
        args[2] = str(tmp_path / "nope")
    elif case == "bad-config":
        (tmp_path / "c.yaml").write_text("model: [oops\n")
        args += ["--config", str(tmp_path / "c.yaml")]
    elif case == "bad-config-key":
        (tmp_path / "c.yaml").write_text("model: {lambda_cl: -1}\n")
        args += ["--config", str(tmp_path / "c.yaml")]
    elif case == "resume-without-out":
        args = args[:-2] + ["--resume"]
    elif case == "bad-device":
        args += ["--device", "tpu:7"]
    else:
        f = np.load(data / "text_feat.npy")
        f[3, 2] = np.nan
        np.save(data / "text_feat.npy", f)
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("motorec"), err


def test_print_config_shows_every_section_with_config_and_flags_applied(tmp_path, capsys):
    import yaml

    from motorec.cli import main
    from motorec.config import MODEL_NAMES, Config

    (tmp_path / "c.yaml").write_text("motorec: {codebook_size: 32}\nwrappers: {ensemble: 3}\n")
    assert main(["train", "--config", str(tmp_path / "c.yaml"), "--epochs", "7", "--print-config"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert set(shown) == {"model", "wrappers", "train", "data", *MODEL_NAMES}
    assert shown["motorec"]["codebook_size"] == 32 and shown["wrappers"]["ensemble"] == 3
    assert shown["train"]["epochs"] == 7
    assert Config.from_dict(shown).to_dict() == shown  # what it prints loads back as the same config
    assert not (tmp_path / "runs").exists()


def test_evaluate_and_tokenize_a_run(run, capsys):
    from motorec.cli import main

    tmp, data, cfg, out, p = run
    assert p.returncode == 0, p.stderr[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    assert main(["evaluate", str(out), "--model", "motorec"]) == 0
    text = capsys.readouterr().out
    row = [line for line in text.splitlines() if line.startswith("motorec")][0]
    assert f"{m['motorec']['test']['hybrid']['recall@20']:.4f}" in row  # the best checkpoint, re-evaluated

    assert main(["tokenize", str(out)]) == 0
    codes = np.load(out / "tokens.npy")
    assert codes.shape == (80, 4) and codes.dtype == np.int64  # 2 modalities x 2 levels
    assert codes.min() >= 0 and codes.max() < 8
    lines = (out / "tokens.tsv").read_text().splitlines()
    assert lines[0].split("\t") == ["itemID", "image", "text"] and len(lines) == 81
    item, image, text_codes = lines[5].split("\t")
    assert item == "4" and [int(c) for c in image.split("-")] == codes[4, :2].tolist()
    assert main(["tokenize", str(out), "--output", str(tmp / "t.csv")]) == 2
    assert main(["tokenize", str(tmp)]) == 2  # not a run directory


def test_resume_cli_continues_and_refuses_other_config(run, tmp_path, capsys):
    from motorec.cli import main

    tmp, data, cfg, out, p = run
    assert p.returncode == 0
    resumed = tmp_path / "r"
    base = ["train", "--data", str(data), "--model", "lightgcn", "--config", str(cfg), "--out", str(resumed), "--quiet"]
    assert main(base + ["--epochs", "1"]) == 0
    assert main(base + ["--epochs", "2", "--resume"]) == 0
    m = json.loads((resumed / "metrics.json").read_text())
    assert m["lightgcn"]["epochs_run"] == 2
    capsys.readouterr()
    assert main(base + ["--epochs", "2", "--resume", "--seed", "9"]) == 2
    assert "config" in capsys.readouterr().err


def test_results_table_shows_dash_without_timing():
    from motorec.cli import results_table

    m = {"hybrid": {"recall@20": 0.25, "ndcg@20": 0.5}, "warm": {"recall@20": 0.3, "ndcg@20": 0.4},
         "cold": {"recall@20": 0.1, "ndcg@20": 0.05}, "hybrid_cold": {"recall@20": 0.7, "ndcg@20": 0.7}}
    lines = results_table({"trained": {"test": m, "seconds_per_epoch": 1.25}, "evaluated": {"test": m}}).splitlines()
    assert lines[1].split() == ["model", "cold", "R@20", "cold", "N@20", "warm", "R@20", "warm", "N@20", "hybrid",
                                "R@20", "hybrid", "N@20", "s/epoch"]
    assert lines[3].split()[-1] == "1.25" and lines[4].split()[-1] == "-"
    assert lines[3].split()[1:7] == ["0.1000", "0.0500", "0.3000", "0.4000", "0.2500", "0.5000"]


def test_split_seed_flag_sets_the_cold_split_draw(tmp_path, capsys):
    from motorec.cli import main

    data = write_mmrec(tmp_path / "data")
    base = ["train", "--data", str(data), "--model", "lightgcn", "--epochs", "1", "--quiet"]
    assert main(base + ["--out", str(tmp_path / "a"), "--split-seed", "5"]) == 0
    info = json.loads((tmp_path / "a" / "run.json").read_text())
    assert info["data_seed"] == 5 and info["split"] == "cold"
    import yaml

    assert yaml.safe_load((tmp_path / "a" / "config.yaml").read_text())["data"]["seed"] == 5
    capsys.readouterr()
    assert main(base + ["--out", str(tmp_path / "b"), "--split-seed", "-1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data.seed" in err[0], err


def test_main_ends_the_process_only_after_train_left_a_process_group(monkeypatch):
    """``main`` (the console script) ends a torchrun rank with os._exit once ``train`` has left its process
    group; otherwise, and always in ``run`` (the in-process API), the exit code is returned."""
    import motorec.cli as cli

    exits = []
    monkeypatch.setattr(cli.os, "_exit", exits.append)
    monkeypatch.setattr(cli, "execute", lambda argv=None: cli.Outcome(0))
    assert cli.main(["train"]) == 0 and exits == []
    monkeypatch.setattr(cli, "execute", lambda argv=None: cli.Outcome(0, left_process_group=True))
    assert cli.run(["train"]) == 0 and exits == []  # the in-process API never exits
    cli.main(["train"])
    assert exits == [0]


def _read_recs(path):
    lines = Path(path).read_text().splitlines()
    assert lines[0].split("\t") == ["userID", "rank", "itemID", "score", "kind"]
    recs = {}
    for line in lines[1:]:
        u, rank, item, score, kind = line.split("\t")
        recs.setdefault(int(u), []).append((int(rank), int(item), float(score), kind))
    return recs


def test_recommend_top_k_with_new_items(run, tmp_path, capsys):
    import torch

    from motorec.cli import main
    from motorec.train import RunDir

    tmp, data, cfg, out, p = run
    assert p.returncode == 0, p.stderr[-3000:]
    ds = RunDir(out).load_dataset()
    known = {}
    for part in (ds.train, ds.valid, ds.test):
        for u, i in part.tolist():
            known.setdefault(u, set()).add(i)
    # the catalog alone: each user's list is the model's top-K with every known item left out
    assert main(["recommend", str(out), "--top-k", "7", "--users", "0,5,9"]) == 0
    assert "wrote" in capsys.readouterr().out
    recs = _read_recs(out / "recommendations.tsv")
    model, _ = RunDir(out).load_trained("motorec", ds, "cpu")
    scores = model.score(torch.tensor([0, 5, 9])).float()
    assert sorted(recs) == [0, 5, 9]
    for r, u in enumerate((0, 5, 9)):
        s = scores[r].clone()
        s[list(known.get(u, ()))] = float("-inf")
        expect = s.topk(7).indices.tolist()
        got = recs[u]
        assert [x[0] for x in got] == list(range(1, 8)) and [x[1] for x in got] == expect
        assert not {x[1] for x in got} & known.get(u, set())
        for _, i, sc, kind in got:
            assert sc == pytest.approx(float(s[i]), rel=1e-5, abs=1e-6)
            assert kind == ("warm" if bool(model.warm_mask[i]) else "cold")
    # brand-new items from their features: ids num_items.., scored by the grown model
    new = tmp_path / "new"
    new.mkdir()
    g = np.random.default_rng(0)
    feats = {m: (g.standard_normal((6, f.shape[1])) * 3).astype(np.float32) for m, f in ds.features.items()}
    for m, f in feats.items():
        np.save(new / f"{m}_feat.npy", f)
    outp = tmp_path / "r.tsv"
    assert main(["recommend", str(out), "--new-items", str(new), "--top-k", str(ds.num_items + 6),
                 "--output", str(outp)]) == 0
    assert f"6 new items are ids {ds.num_items}..{ds.num_items + 5}" in capsys.readouterr().out
    recs = _read_recs(outp)
    assert len(recs) == ds.num_users
    grown = model.with_new_items({m: torch.from_numpy(f) for m, f in feats.items()})
    all_scores = grown.score(torch.arange(ds.num_users)).float()
    for u, got in recs.items():
        items = [x[1] for x in got]
        assert set(range(ds.num_items, ds.num_items + 6)) <= set(items)  # a full list holds every new item
        assert len(items) == ds.num_items + 6 - len(known.get(u, ()))
        for _, i, sc, kind in got:
            assert (kind == "new") == (i >= ds.num_items)
            assert sc == pytest.approx(float(all_scores[u, i]), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("case, match", [
    ("baseline-new", "--new-items needs --model motorec"),
    ("width", r"features\['text'\] must be \[N, 6\] \(the trained width\), got \(2, 3\)"),
    ("modalities", r"each trained modality \['image', 'text'\] to a tensor, got \['image'\]"),
    ("users", r"--users: id\(s\) \[999\] outside"),
    ("users-text", "--users must be comma-separated integer"),
    ("top-k", "--top-k must be >= 1"),
    ("output", "--output must end in .tsv"),
    ("no-model", "has no trained content model"),
])
def test_recommend_user_errors(run, tmp_path, capsys, case, match):
    from motorec.cli import main

    tmp, data, cfg, out, p = run
    new = tmp_path / "new"
    new.mkdir()
    np.save(new / "image_feat.npy", np.ones((2, 12), np.float32))
    np.save(new / "text_feat.npy", np.ones((2, 3 if case == "width" else 6), np.float32))
    if case == "modalities":
        (new / "text_feat.npy").unlink()
    args = {"baseline-new": ["--model", "lightgcn", "--new-items", str(new)], "width": ["--new-items", str(new)],
            "modalities": ["--new-items", str(new)], "users": ["--users", "1,999"], "users-text": ["--users", "a,b"],
            "top-k": ["--top-k", "0"], "output": ["--output", str(tmp_path / "r.csv")],
            "no-model": ["--model", "content"]}[case]
    assert main(["recommend", str(out), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("motorec: error:") and re.search(match, err[0]), err


def test_load_run_gives_back_the_trained_model(run, tmp_path):
    import shutil

    import torch

    from motorec.data import DataError
    from motorec.train import CheckpointError, load_run

    tmp, data, cfg, out, p = run
    assert p.returncode == 0, p.stderr[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    model, ds = load_run(out)
    assert not model.training and ds.num_items == model.num_items
    from motorec.eval import evaluate

    res = evaluate(model.score, ds, split="test")
    assert res["hybrid"]["recall@20"] == pytest.approx(m["motorec"]["test"]["hybrid"]["recall@20"], abs=1e-9)
    lg, _ = load_run(out, "lightgcn")
    assert type(lg).__name__ != type(model).__name__
    # the data folder moved: say where it is now
    moved = tmp_path / "moved"
    shutil.copytree(data, moved)
    info = json.loads((out / "run.json").read_text())
    info["data"] = str(tmp_path / "gone")
    run2 = tmp_path / "run2"
    shutil.copytree(out, run2)
    (run2 / "run.json").write_text(json.dumps(info))
    with pytest.raises(DataError, match="does not exist"):
        load_run(run2)
    again, _ = load_run(run2, data=moved)
    assert torch.equal(again.score(torch.arange(5)), model.score(torch.arange(5)))
    with pytest.raises(CheckpointError, match="not a motorec run directory"):
        load_run(tmp_path)


def test_train_and_evaluate_on_a_synthetic_spec(tmp_path, capsys):
    """--data synthetic:...: the catalog from the spec's seed, the cold draw from --split-seed; run.json keeps the
    spec, so evaluate (and load_run) rebuild the same dataset."""
    from motorec.cli import main
    from motorec.train.runs import load_run

    spec = "synthetic:users=120,items=90,interactions=1500,noise=2,seed=3"
    out = tmp_path / "o"
    assert main(["train", "--data", spec, "--model", "lightgcn_content", "--epochs", "1", "--split-seed", "4",
                 "--quiet", "--out", str(out)]) == 0
    info = json.loads((out / "run.json").read_text())
    assert info["data"] == spec and info["dataset"] == "synthetic" and info["data_seed"] == 4
    capsys.readouterr()
    assert main(["evaluate", str(out), "--quiet"]) == 0
    assert "lightgcn_content" in capsys.readouterr().out
    _, ds = load_run(out, "lightgcn_content")
    from motorec.data import load_synthetic_spec

    assert ds.fingerprint() == load_synthetic_spec(spec, seed=4).fingerprint() == info["dataset_fingerprint"]
