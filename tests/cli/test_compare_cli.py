"""``motorec compare``: flags reach :func:`motorec.experiments.run_compare` and each run's worker
command, the summary is printed, failures and bad flags give one line; one real tiny run on the bundled data."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from motorec.experiments import compare

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))
from _mmrec import subprocess_env  # noqa: E402


def _fake_train(calls, fail=()):
    """A stand-in for the per-run ``motorec train`` subprocess: records the command and writes a metrics.json
    with every setting (test recall@20 = the draw's number + a per-model offset (its place in COMPARE_MODELS)
    + 0.01 when the run's config keeps the wrappers on; validation recall@20 also grows with train.lr, read from
    ``--config``), the cost keys (seconds per epoch 2 + the model's place, 3 epochs) and the run's config.yaml."""
    import yaml

    from motorec.cli import COMPARE_MODELS

    class Done:
        def __init__(self, rc):
            self.returncode = rc

    def run(cmd, **kw):
        calls.append(cmd)
        out = Path(cmd[cmd.index("--out") + 1])
        draw = int(cmd[cmd.index("--split-seed") + 1])
        if draw in fail:
            return Done(4)
        cfg = yaml.safe_load(Path(cmd[cmd.index("--config") + 1]).read_text()) if "--config" in cmd else {}
        lr = (cfg.get("train") or {}).get("lr", 1e-3)
        wrapped = (cfg.get("wrappers") or {}).get("ensemble", 20) > 1
        (out / "config.yaml").write_text(yaml.safe_dump({"train": {"lr": lr}, "model": cfg.get("model") or {}}))
        models = [cmd[i + 1] for i, a in enumerate(cmd) if a == "--model"]
        m = {}
        for name in models:
            j = COMPARE_MODELS.index(name) if name in COMPARE_MODELS else 0
            v = 0.1 + 0.01 * draw + 0.05 * j + 0.01 * wrapped
            block = {"recall@10": v / 2, "ndcg@10": v / 3, "recall@20": v, "ndcg@20": v / 4, "num_users": 5}
            m[name] = {"test": {k: dict(block) for k in ("cold", "warm", "hybrid", "hybrid_warm", "hybrid_cold")},
                       "valid": {k: {**block, "recall@20": v + lr} for k in ("cold", "warm", "hybrid")},
                       "seconds_per_epoch": 2.0 + j, "epochs_run": 3}
        (out / "metrics.json").write_text(json.dumps(m))
        return Done(0)

    return run


def _arg(cmd, flag):
    return cmd[cmd.index(flag) + 1] if flag in cmd else None


def test_compare_passes_flags_and_prints_summary(tmp_path, monkeypatch, capsys):
    from motorec.cli import COMPARE_MODELS, main
    from motorec.config import Config

    calls = []
    monkeypatch.setattr(compare.subprocess, "run", _fake_train(calls))
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: {cold_calibration: 1.0}\n")
    out = tmp_path / "cmp"
    args = ["compare", "--out", str(out), "--draws", "2", "--seeds", "2", "--epochs", "3", "--config", str(cfg),
            "--threads", "2", "--backend", "torch", "--device", "cpu", "--quiet"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    # default variants plain and wrapped: one subprocess per (draw, seed, model, variant), one model each
    assert len(calls) == 2 * 2 * len(COMPARE_MODELS) * 2
    rows = sorted((Path(_arg(c, "--out")).parent.name, Path(_arg(c, "--out")).name) for c in calls)
    assert rows == sorted((f"draw{d}_seed{s}", f"{m}{v}") for d in (0, 1) for s in (0, 1) for m in COMPARE_MODELS
                          for v in ("", "+wrapped"))
    for c in calls:
        name = Path(_arg(c, "--out")).name
        assert [c[i + 1] for i, a in enumerate(c) if a == "--model"] == [name.split("+")[0]]
        for flag, v in (("--epochs", "3"), ("--threads", "2"), ("--backend", "torch"), ("--device", "cpu")):
            assert _arg(c, flag) == v
        if name.endswith("+wrapped"):  # the config as given
            assert _arg(c, "--config") == str(cfg.resolve())
        else:  # plain: the config with the wrappers off, beside the runs
            assert _arg(c, "--config") == str((out / "configs" / f"{name}.yaml").resolve())
            plain = Config.load(_arg(c, "--config"))
            assert (plain.wrappers.ensemble, plain.wrappers.decoupled) == (1, False)
            assert plain.model.cold_calibration == 1.0
    assert COMPARE_MODELS == ("motorec", "lightgcn", "lightgcn_content", "content", "knn", "aldi")
    md = (out / "summary.md").read_text()
    assert md in printed and "summary.json" in printed
    s = json.loads((out / "summary.json").read_text())
    assert s["draws"] == 2 and s["seeds"] == 2 and s["draw_ids"] == [0, 1]
    assert s["models"] == [f"{m}{v}" for m in COMPARE_MODELS for v in ("", "+wrapped")]
    assert s["entries"]["knn"] == {"model": "knn", "variant": "plain",
                                   "overrides": {"wrappers": {"ensemble": 1, "decoupled": False}}}
    # aldi is the last model: the fake gives it the highest numbers, so aldi+wrapped is the strongest baseline
    assert s["reference"] == "motorec+wrapped" and s["tests"]["cold"]["against"] == "aldi+wrapped"
    # fake recall@20 of motorec on draw d = 0.1 + 0.01 d (+ 0.01 wrapped)
    assert s["table"]["motorec"]["cold"]["per_draw"]["recall@20"] == pytest.approx([0.10, 0.11])
    assert s["table"]["motorec+wrapped"]["cold"]["per_draw"]["recall@20"] == pytest.approx([0.11, 0.12])
    assert s["table"]["knn"]["cost"] == {"seconds_per_epoch": pytest.approx(6.0), "train_seconds": pytest.approx(18.0)}
    assert "| knn+wrapped |" in md and "| 6.00 | 18.0 |" in md and "s/epoch" in md
    prov = s["provenance"]
    assert prov["command"].startswith("motorec compare --out ") and "--variants plain,wrapped" in prov["command"]
    assert prov["commit"] is None or len(prov["commit"]) == 40

    # re-running resumes: every run is finished, so nothing is started again
    calls.clear()
    assert main(args) == 0
    assert calls == []


def test_compare_models_flag_and_failed_run(tmp_path, monkeypatch, capsys):
    from motorec.cli import main

    calls = []
    monkeypatch.setattr(compare.subprocess, "run", _fake_train(calls, fail=(1,)))
    out = tmp_path / "cmp"
    rc = main(["compare", "--out", str(out), "--draws", "2", "--model", "lightgcn", "--model", "knn", "--quiet",
               "--variants", "wrapped"])
    assert rc == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "draw 1 seed 0 lightgcn+wrapped (exit 4" in err[0] and "knn+wrapped" in err[0]
    assert sorted(_arg(c, "--model") for c in calls) == ["knn", "knn", "lightgcn", "lightgcn"]
    assert "--epochs" not in calls[0] and "--config" not in calls[0]
    assert (out / "runs" / "draw0_seed0" / "knn+wrapped" / "metrics.json").is_file()  # the finished run stays


def test_compare_report_draws_ablations_and_variants_flags(tmp_path, monkeypatch, capsys):
    """The report's command: draws 5-6 (--draws-from), tuning on draw 0, the ablation rows, one variant."""
    from motorec.cli import main
    from motorec.config import Config

    calls = []
    monkeypatch.setattr(compare.subprocess, "run", _fake_train(calls))
    out = tmp_path / "cmp"
    assert main(["compare", "--out", str(out), "--draws", "2", "--draws-from", "5", "--model", "motorec",
                 "--model", "lightgcn", "--variants", "wrapped", "--ablations", "--tune", "--grid-reg", "1e-4",
                 "--quiet"]) == 0
    grid = [c for c in calls if "tune" in Path(_arg(c, "--out")).parts]
    finals = [c for c in calls if c not in grid]
    assert {_arg(c, "--split-seed") for c in grid} == {"0"} and len(grid) == 2  # lightgcn+wrapped: 2 lr points
    assert sorted({_arg(c, "--split-seed") for c in finals}) == ["5", "6"]
    names = ["motorec+wrapped", "lightgcn+wrapped", "motorec-no_sparse", "motorec-no_rarity", "motorec-no_item_item",
             "motorec-continuous", "motorec-no_tokenizer"]
    assert sorted(Path(_arg(c, "--out")).name for c in finals) == sorted(names * 2)
    ab = Config.load(out / "configs" / "motorec-no_item_item.yaml")
    assert ab.to_dict()["motorec"]["item_item"] is False and ab.wrappers.ensemble == Config().wrappers.ensemble
    assert Config.load(out / "configs" / "motorec-no_sparse.yaml").to_dict()["motorec"]["sparse_weight"] == 0.0
    assert Config.load(out / "configs" / "motorec-continuous.yaml").to_dict()["motorec"]["continuous"] is True
    bare = Config.load(out / "configs" / "motorec-no_tokenizer.yaml")  # no quantization, reconstruction, pre-training
    assert bare.settings().continuous and bare.settings().lambda_rq == 0.0 and bare.train.pretrain_epochs == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["models"] == names and s["draw_ids"] == [5, 6] and s["draws_from"] == 5
    assert s["tuning"]["on"] == {"draw": 0, "seed": 0, "split": "valid"}
    # the ablations are MoToRec rows: compared with the strongest baseline, never chosen as it
    assert s["draw_stats"]["cold"]["against"] == "lightgcn+wrapped"
    assert set(s["draw_stats"]["cold"]["rows"]) == set(names)
    cmd = s["provenance"]["command"]
    assert "--draws 2 --draws-from 5" in cmd and "--ablations" in cmd and "--tune" in cmd
    md = (out / "summary.md").read_text()
    assert "cold-item draws 5-6" in md and "| draw 5 | draw 6 |" in md and "| motorec-no_rarity |" in md
    assert "95% interval" in md and "/2 |" in md


def test_compare_tune_grid_then_one_run_per_model(tmp_path, monkeypatch, capsys):
    from motorec.cli import COMPARE_MODELS, main

    calls = []
    monkeypatch.setattr(compare.subprocess, "run", _fake_train(calls))
    out = tmp_path / "cmp"
    args = ["compare", "--out", str(out), "--draws", "2", "--tune", "--jobs", "2", "--epochs", "1", "--quiet",
            "--variants", "plain"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    # 5 baselines x 4 grid points on draw 0, then the own keys one at a time at the chosen point (the config's
    # value is that point: knn.cold_k 5, 20; aldi alpha, beta, gamma one more each), then 6 models x 2 draws
    assert len(calls) == 5 * 4 + 2 + 3 + 6 * 2
    assert all(len([a for a in c if a == "--model"]) == 1 for c in calls)
    grid = [c for c in calls if "tune" in Path(c[c.index("--out") + 1]).parts]
    assert len(grid) == 25 and "motorec" not in {c[c.index("--model") + 1] for c in grid}
    assert sorted(Path(_arg(c, "--out")).name for c in grid if "cold_k" in _arg(c, "--out")) == [
        "lr0.005_reg0.0001_cold_k20", "lr0.005_reg0.0001_cold_k5"]
    s = json.loads((out / "summary.json").read_text())
    assert s["tuning"]["grid"] == {"lr": [1e-3, 5e-3], "lambda_reg": [1e-4, 1e-3]}
    # the fake's validation recall grows with lr; lambda_reg ties, so the default 1e-4 stays
    for name in COMPARE_MODELS[1:]:
        assert s["tuning"]["models"][name] == {**s["tuning"]["models"][name], "tuned": True, "lr": 5e-3,
                                               "lambda_reg": 1e-4}
    assert s["tuning"]["models"]["motorec"] == {"tuned": False, "lr": 1e-3, "lambda_reg": 1e-4}
    md = (out / "summary.md").read_text()
    assert md in printed and "Equal tuning" in md and "| aldi | 0.005 | 0.0001 | alpha 0.9, beta 0.05, gamma 0.1 |" in md
    assert s["tuning"]["models"]["knn"]["own"] == {"cold_k": 10} and "one at a time" in s["tuning"]["rule"]
    assert [p["value"] for p in s["tuning"]["models"]["knn"]["own_points"]["cold_k"]] == [5, 10, 20]

    calls.clear()  # resumable: nothing left to run
    assert main(args) == 0 and calls == []
    capsys.readouterr()
    # another grid on the same output is refused in one line naming both grids
    assert main(args + ["--grid-lr", "1e-3,1e-2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "lr 0.001,0.005 x lambda_reg 0.0001,0.001" in err[0] and "lr 0.001,0.01" in err[0]
    assert calls == []


def test_compare_tune_reference_and_custom_grid(tmp_path, monkeypatch, capsys):
    from motorec.cli import main

    calls = []
    monkeypatch.setattr(compare.subprocess, "run", _fake_train(calls))
    out = tmp_path / "cmp"
    assert main(["compare", "--out", str(out), "--draws", "1", "--model", "motorec", "--model", "knn", "--tune",
                 "--tune-reference", "--grid-lr", "1e-3", "--grid-reg", "0,1e-4", "--quiet", "--variants", "plain",
                 "--no-own-grids"]) == 0
    assert len(calls) == 2 * 2 + 2
    chosen = json.loads((out / "tune" / "chosen.json").read_text())
    assert set(chosen) == {"motorec", "knn"} and chosen["knn"]["grid"] == {"lr": [1e-3], "lambda_reg": [0.0, 1e-4]}
    assert chosen["motorec"]["lambda_reg"] == 0.0  # a tie: the first point
    assert (out / "tune" / "motorec" / "lr0.001_reg0.0").is_dir()
    # the plain layout and the tuned one do not mix
    capsys.readouterr()
    assert main(["compare", "--out", str(out), "--draws", "1", "--model", "knn", "--quiet", "--variants", "plain"]) == 2
    assert "made with --tune" in capsys.readouterr().err


@pytest.mark.parametrize("args, match", [
    (["--draws", "0"], "--draws must be >= 1"),
    (["--jobs", "0"], "--jobs must be >= 1"),
    (["--model", "nope"], "invalid choice"),
    (["--data", "/no/such/dir"], "is not a directory"),
    (["--tune", "--grid-lr", "abc"], "argument --grid-lr: expected comma-separated numbers, got 'abc'"),
    (["--tune", "--grid-lr", "-1e-3"], "argument --grid-lr: train.lr grid values must be > 0, got -0.001"),
    (["--tune", "--grid-lr=1e-3,-5e-3"], "argument --grid-lr: train.lr grid values must be > 0"),
    (["--tune", "--grid-reg", "-0.001"], "argument --grid-reg: model.lambda_reg grid values must be >= 0"),
    (["--tune", "--grid-reg", "1e-4,0.0001"], "argument --grid-reg: the model.lambda_reg grid repeats a value"),
    (["--grid-lr", "1e-3", "--tune-reference"], "--tune-reference, --grid-lr only apply with --tune"),
], ids=["draws", "jobs", "model", "data", "grid-lr-text", "grid-lr-negative", "grid-lr-negative-in-list",
        "grid-reg-negative", "grid-reg-repeat", "grid-without-tune"])
def test_compare_bad_flags_one_line(tmp_path, monkeypatch, capsys, args, match):
    from motorec.cli import main

    monkeypatch.setattr(compare.subprocess, "run", lambda *a, **k: pytest.fail("no run may start"))
    assert main(["compare", "--out", str(tmp_path / "o"), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and match in err[0], err


def test_compare_refuses_a_bad_config_before_any_run(tmp_path, monkeypatch, capsys):
    from motorec.cli import main

    monkeypatch.setattr(compare.subprocess, "run", lambda *a, **k: pytest.fail("no run may start"))
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train: {select_group: warm}\n")
    assert main(["compare", "--out", str(tmp_path / "o"), "--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "select_group" in err[0] and "train" in err[0]


@pytest.mark.slow
def test_compare_tune_real_tiny_run_on_bundled_data(tmp_path):
    """The tuned path for real (three runs of seconds): lightgcn, one epoch, a two-point grid, one draw."""
    from motorec.config import Config
    from motorec.train.trainer import select_score

    out = tmp_path / "cmp"
    p = subprocess.run([sys.executable, "-m", "motorec", "compare", "--model", "lightgcn", "--epochs", "1",
                        "--draws", "1", "--tune", "--grid-lr", "1e-3,5e-3", "--grid-reg", "1e-4", "--out", str(out),
                        "--quiet", "--variants", "plain"], env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    chosen = json.loads((out / "tune" / "chosen.json").read_text())["lightgcn"]
    for pt in chosen["points"]:
        m = json.loads((out / "tune" / "lightgcn" / f"lr{pt['lr']!r}_reg{pt['lambda_reg']!r}" / "metrics.json")
                       .read_text())
        assert pt["score"] == select_score(m["lightgcn"]["valid"], "warm_cold_mean")
    assert chosen["score"] == max(pt["score"] for pt in chosen["points"])
    run = out / "runs" / "draw0_seed0" / "lightgcn"
    # the final run trained the chosen config (the epoch cap is set on the command line)
    assert Config.load(run / "config.yaml").differences(Config.load(out / "tune" / "lightgcn.yaml")) == []
    assert Config.load(run / "config.yaml").train.lr == chosen["lr"]
    s = json.loads((out / "summary.json").read_text())
    assert s["tuning"]["models"]["lightgcn"]["lr"] == chosen["lr"] and "Equal tuning" in p.stdout


@pytest.mark.slow
def test_compare_real_tiny_run_on_bundled_data(tmp_path):
    """One real run (takes seconds): lightgcn, one epoch, one draw, through the subprocess path."""
    out = tmp_path / "cmp"
    p = subprocess.run([sys.executable, "-m", "motorec", "compare", "--model", "lightgcn", "--epochs", "1",
                        "--draws", "1", "--out", str(out), "--quiet", "--variants", "wrapped"], env=subprocess_env(),
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    m = json.loads((out / "runs" / "draw0_seed0" / "lightgcn+wrapped" / "metrics.json").read_text())
    assert set(m["lightgcn"]["test"]) == {"cold", "warm", "hybrid", "hybrid_warm", "hybrid_cold"}
    s = json.loads((out / "summary.json").read_text())
    assert set(s["table"]) == {"lightgcn+wrapped", "random", "popularity_oracle"}
    r = s["table"]["lightgcn+wrapped"]["warm"]["recall@20"]["mean"]
    assert r == m["lightgcn"]["test"]["warm"]["recall@20"] and 0.0 < r <= 1.0
    assert "| lightgcn+wrapped |" in p.stdout and "| popularity_oracle |" in p.stdout


def test_compare_collect_refuses_training_flags(tmp_path, monkeypatch):
    """--collect trains nothing: a training flag beside it is an error naming the flag, not silently ignored."""
    from motorec.cli import main

    called = []
    monkeypatch.setattr("motorec.experiments.summary.collect", lambda *a, **k: called.append(a))
    with pytest.raises(SystemExit, match="--collect trains nothing; drop --tune, --draws-for"):
        main(["compare", "--collect", str(tmp_path / "a"), "--out", str(tmp_path / "r"), "--tune",
              "--draws-for", "knn=1"])
    assert called == []


def test_ablations_take_the_tuned_reference_setting(tmp_path, monkeypatch):
    """With motorec+wrapped tuned, every ablation row runs at its chosen lr / lambda_reg (after it), so that an
    ablation differs from the row it ablates by the one part; untuned, they run at the config's setting."""
    from motorec.cli import main

    calls = []
    monkeypatch.setattr(compare.subprocess, "run", _fake_train(calls))
    out = tmp_path / "cmp"
    assert main(["compare", "--out", str(out), "--draws", "1", "--model", "motorec", "--tune", "--tune-reference",
                 "--grid-lr", "1e-3,5e-3", "--grid-reg", "1e-4", "--quiet", "--variants", "wrapped",
                 "--ablations", "--no-own-grids"]) == 0
    chosen = json.loads((out / "tune" / "chosen.json").read_text())
    assert chosen["motorec+wrapped"]["lr"] == 5e-3  # the fake's validation grows with lr
    import yaml
    finals = [c for c in calls if "/tune/" not in _arg(c, "--out")]
    ablation_runs = [c for c in finals if "motorec-" in _arg(c, "--out")]
    assert len(ablation_runs) == len(compare.ABLATIONS)
    for c in ablation_runs:
        cfg = yaml.safe_load(Path(_arg(c, "--config")).read_text())
        assert cfg["train"]["lr"] == 5e-3 and cfg["model"]["lambda_reg"] == 1e-4
    no_sparse = yaml.safe_load((out / "configs" / "motorec-no_sparse.yaml").read_text())
    assert no_sparse["motorec"]["sparse_weight"] == 0.0
    # every ablation run started after the reference's tuning ended
    first_ablation = min(calls.index(c) for c in ablation_runs)
    assert all(calls.index(c) < first_ablation for c in calls if "/tune/" in _arg(c, "--out"))
