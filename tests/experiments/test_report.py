"""The report machinery of ``motorec compare`` (issue 35): variants plain / wrapped, ablation rows, report draws
apart from the tuning draw, each model's own grid tuned one key at a time after lr x reg, cost columns, draw-level
statistics, the commit and command, and summaries written before these existed."""
import json
from pathlib import Path

import pytest

from motorec.experiments import compare
from motorec.experiments.errors import ArgumentError


def _block(r20):
    return {"recall@10": r20 / 2, "ndcg@10": r20 / 3, "recall@20": r20, "ndcg@20": r20 / 4, "num_users": 10}


def _fake(calls, valid, test=lambda model, wrapped, draw: 0.1 + 0.01 * draw):
    """A stand-in for the worker subprocess: writes config.yaml (the --config's sections) and metrics.json whose
    validation warm = cold Recall@20 is ``valid(model, config dict)`` and test Recall@20 ``test(model, wrapped,
    draw)``, with the cost keys."""
    import yaml

    class Done:
        returncode = 0

    def run(cmd, **kw):
        calls.append(cmd)
        out = Path(cmd[cmd.index("--out") + 1])
        cfg = yaml.safe_load(Path(cmd[cmd.index("--config") + 1]).read_text()) if "--config" in cmd else {}
        cfg.setdefault("train", {}).setdefault("lr", 1e-3)
        cfg.setdefault("model", {}).setdefault("lambda_reg", 1e-4)
        (out / "config.yaml").write_text(yaml.safe_dump(cfg))
        draw = int(cmd[cmd.index("--split-seed") + 1])
        wrapped = (cfg.get("wrappers") or {}).get("ensemble", 20) > 1
        m = {}
        for name in [cmd[i + 1] for i, a in enumerate(cmd) if a == "--model"]:
            v = valid(name, cfg)
            t = test(name, wrapped, draw)
            m[name] = {"valid": {k: _block(v) for k in ("warm", "cold", "hybrid")},
                       "test": {k: _block(t) for k in ("cold", "warm", "hybrid", "hybrid_warm", "hybrid_cold")},
                       "seconds_per_epoch": 1.5, "epochs_run": 4}
        (out / "metrics.json").write_text(json.dumps(m))
        return Done()

    return run


def _arg(cmd, flag):
    return cmd[cmd.index(flag) + 1] if flag in cmd else None


def _aldi_valid(name, cfg):
    """aldi: alpha 0.5 is best at the default beta; beta 0.5 is best only together with alpha 0.5 (so the beta
    stage must run at the chosen alpha); gamma ties (the config's value stays)."""
    a = (cfg.get("aldi") or {}).get("alpha", 0.9)
    b = (cfg.get("aldi") or {}).get("beta", 0.05)
    return 0.2 + 0.1 * (a == 0.5) + 0.1 * (a == 0.5 and b == 0.5) + 0.05 * (cfg["train"]["lr"] == 5e-3)


def test_own_grid_is_tuned_one_key_at_a_time_after_lr_reg(tmp_path, monkeypatch):
    from motorec.config import Config

    calls = []
    monkeypatch.setattr(compare.subprocess, "run", _fake(calls, _aldi_valid))
    s = compare.run_compare(tmp_path, models=["aldi"], draws=1, tune=True, grid_reg=(1e-4,), progress=False)
    tune = [c for c in calls if "/tune/" in _arg(c, "--out")]
    names = [Path(_arg(c, "--out")).name for c in tune]
    # lr x reg (2 points), then alpha (one new value: 0.9 is the config's, that point already ran), beta at the
    # chosen alpha, gamma at both
    assert names == ["lr0.001_reg0.0001", "lr0.005_reg0.0001", "lr0.005_reg0.0001_alpha0.5",
                     "lr0.005_reg0.0001_alpha0.5_beta0.5", "lr0.005_reg0.0001_alpha0.5_beta0.5_gamma1.0"]
    chosen = json.loads((tmp_path / "tune" / "chosen.json").read_text())["aldi"]
    assert (chosen["lr"], chosen["lambda_reg"]) == (5e-3, 1e-4)
    assert chosen["own"] == {"alpha": 0.5, "beta": 0.5, "gamma": 0.1}
    assert chosen["score"] == pytest.approx(0.45)
    assert [p["score"] for p in chosen["own_points"]["beta"]] == pytest.approx([0.35, 0.45])
    assert chosen["grid"]["own"] == {"alpha": [0.5, 0.9], "beta": [0.05, 0.5], "gamma": [0.1, 1.0]}
    final = Config.load(tmp_path / "tune" / "aldi.yaml").to_dict()
    assert (final["aldi"]["alpha"], final["aldi"]["beta"], final["train"]["lr"]) == (0.5, 0.5, 5e-3)
    finals = [c for c in calls if c not in tune]
    assert len(finals) == 1 and _arg(finals[0], "--config") == str((tmp_path / "tune" / "aldi.yaml").resolve())
    assert s["tuning"]["models"]["aldi"]["own"] == chosen["own"] and "one at a time" in s["tuning"]["rule"]
    md = (tmp_path / "summary.md").read_text()
    assert "alpha 0.5, beta 0.5, gamma 0.1" in md and "Rule:" in md
    assert "Note: draw 0, where the tuning chose each setting, is among the compared draws" in md
    # resumable: nothing runs again; another own grid on the same output is refused by name
    calls.clear()
    compare.run_compare(tmp_path, models=["aldi"], draws=1, tune=True, grid_reg=(1e-4,), progress=False)
    assert calls == []
    from motorec.experiments import grids

    monkeypatch.setitem(grids.TUNING_GRID, "aldi", {"alpha": [0.5, 0.9]})
    with pytest.raises(compare.CompareError, match="own grid"):
        compare.run_compare(tmp_path, models=["aldi"], draws=1, tune=True, grid_reg=(1e-4,), progress=False)
    assert calls == []


def test_variants_are_tuned_apart_and_the_report_draws_skip_the_tuning_draw(tmp_path, monkeypatch):
    calls = []
    # lightgcn plain prefers lr 5e-3, wrapped the default: each variant gets its own choice
    monkeypatch.setattr(compare.subprocess, "run", _fake(
        calls, lambda m, cfg: 0.3 + 0.1 * ((cfg["train"]["lr"] == 5e-3) == ((cfg.get("wrappers") or {})
                                                                          .get("ensemble", 20) == 1)),
        test=lambda m, wrapped, draw: {"motorec": 0.30, "lightgcn": 0.20}[m] + 0.05 * wrapped + 0.001 * draw))
    s = compare.run_compare(tmp_path, models=["motorec", "lightgcn"], draws=3, draws_from=5, tune=True,
                            grid_reg=(1e-4,), variants=["plain", "wrapped"], progress=False)
    chosen = json.loads((tmp_path / "tune" / "chosen.json").read_text())
    assert set(chosen) == {"lightgcn", "lightgcn+wrapped"}  # motorec is the untuned reference
    assert chosen["lightgcn"]["lr"] == 5e-3 and chosen["lightgcn+wrapped"]["lr"] == 1e-3
    assert {_arg(c, "--split-seed") for c in calls if "/tune/" in _arg(c, "--out")} == {"0"}
    assert sorted({_arg(c, "--split-seed") for c in calls if "/runs/" in _arg(c, "--out")}) == ["5", "6", "7"]
    assert s["models"] == ["motorec", "motorec+wrapped", "lightgcn", "lightgcn+wrapped"]
    assert s["reference"] == "motorec+wrapped" and s["draw_ids"] == [5, 6, 7]
    ds = s["draw_stats"]["cold"]
    assert ds["against"] == "lightgcn+wrapped"
    r = ds["rows"]["motorec+wrapped"]["recall@20"]
    assert r["ratio"] == pytest.approx((0.35 + 0.006) / (0.25 + 0.006)) and r["wins"] == 3 and r["n"] == 3
    assert r["p_value"] == pytest.approx(0.25) and r["ci_low"] == pytest.approx(r["ci_high"], rel=0.01)
    assert ds["rows"]["lightgcn"]["recall@20"]["wins"] == 0
    assert s["table"]["lightgcn"]["cost"] == {"seconds_per_epoch": 1.5, "train_seconds": 6.0}
    assert s["tests"]["cold"]["recall@20"]["ratio"] == pytest.approx(r["ratio"])
    md = (tmp_path / "summary.md").read_text()
    assert "| motorec+wrapped | 0.3560 ± 0.0010 | 1.391 |" in md and "| 3/3 |" in md
    assert "over 3 draws" in md and "Commit:" in md and "--draws-from 5" in md and "Note: draw 0" not in md


def test_ablation_rows_are_motorec_runs_never_the_strongest_baseline(tmp_path, monkeypatch):
    from motorec.config import Config

    calls = []
    monkeypatch.setattr(compare.subprocess, "run", _fake(
        calls, lambda m, cfg: 0.3, test=lambda m, wrapped, draw: {"motorec": 0.5, "knn": 0.2}[m] + 0.01 * draw))
    s = compare.run_compare(tmp_path, models=["motorec", "knn"], draws=2, variants=["wrapped"], ablations=True,
                            progress=False)
    names = ["motorec+wrapped", "knn+wrapped"] + [f"motorec-{a}" for a in compare.ABLATIONS]
    assert s["models"] == names
    assert {Path(_arg(c, "--out")).name: _arg(c, "--model") for c in calls} == {
        n: ("knn" if n.startswith("knn") else "motorec") for n in names}
    assert s["entries"]["motorec-no_rarity"] == {"model": "motorec", "variant": "ablation",
                                                 "overrides": {"motorec": {"rarity": False}}}
    cfg = Config.load(tmp_path / "configs" / "motorec-no_sparse.yaml")
    assert cfg.to_dict()["motorec"]["sparse_weight"] == 0.0 and cfg.wrappers == Config().wrappers
    for st in compare.SETTING_NAMES:
        assert s["tests"][st]["against"] == "knn+wrapped" and s["draw_stats"][st]["against"] == "knn+wrapped"
    assert s["tuning"] is None and "| motorec-continuous |" in (tmp_path / "summary.md").read_text()
    # the two layouts do not mix
    with pytest.raises(compare.CompareError, match="made with --variants"):
        compare.run_compare(tmp_path, models=["motorec", "knn"], draws=2, progress=False)


def test_summary_json_without_variants_still_formats(tmp_path):
    """A summary.json written before variants, report draws, cost and draw-level statistics existed."""
    old = {"models": ["motorec", "lightgcn"], "draws": 2, "seeds": 2, "split": "cold", "data": None,
           "reference": "motorec", "tuning": None, "runs": [],
           "table": {n: {st: {"recall@20": {"mean": 0.2, "sd": 0.01, "runs": [0.2] * 4},
                              "ndcg@20": {"mean": 0.1, "sd": 0.01, "runs": [0.1] * 4},
                              "per_draw": {"recall@20": [0.2, 0.2], "ndcg@20": [0.1, 0.1]}}
                         for st in compare.SETTING_NAMES} for n in ("motorec", "lightgcn")},
           "tests": {st: {"against": "lightgcn", "recall@20": {"ratio": 1.0, "wins": 0, "losses": 0, "p_value": 1.0},
                          "ndcg@20": {"ratio": 1.0, "p_value": 1.0}} for st in compare.SETTING_NAMES}}
    md = compare.format_summary(old)
    assert "draws 0-1 x 2 seed(s) = 4 runs" in md and "| motorec | 0.2000 ± 0.0100" in md
    assert "| - | - |" in md and "over 4 runs" in md and "Draw level" not in md


@pytest.mark.parametrize("variants, match", [([], "at least one variant"), (["plain", "nope"], "unknown variant"),
                                             (["plain", "plain"], "repeated")])
def test_bad_variants_are_refused(tmp_path, variants, match):
    with pytest.raises(ArgumentError, match=match):
        compare.run_compare(tmp_path, models=["knn"], variants=variants, progress=False)
    with pytest.raises(ArgumentError, match="draws_from"):
        compare.run_compare(tmp_path, models=["knn"], draws_from=-1, progress=False)
    with pytest.raises(ArgumentError, match="ablations.*tune_reference.*add the wrapped variant"):
        compare.run_compare(tmp_path, models=["motorec"], tune=True, tune_reference=True, ablations=True,
                            variants=["plain"], progress=False)


def test_cli_bad_variants_one_line(tmp_path, capsys):
    from motorec.cli import main

    assert main(["compare", "--out", str(tmp_path / "o"), "--variants", "plain,fancy"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--variants" in err[0] and "fancy" in err[0]


@pytest.mark.slow
def test_real_tiny_variants_on_synthetic_data(tmp_path):
    """The per-row path for real (seconds): lightgcn plain and wrapped, one epoch, one draw, a tiny catalog."""
    import subprocess
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))
    from _mmrec import subprocess_env

    out = tmp_path / "cmp"
    p = subprocess.run([sys.executable, "-m", "motorec", "compare", "--model", "lightgcn", "--epochs", "1",
                        "--draws", "1", "--draws-from", "1", "--data", "synthetic:users=60,items=200,interactions=900",
                        "--out", str(out), "--quiet"], env=subprocess_env(), capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    s = json.loads((out / "summary.json").read_text())
    assert s["models"] == ["lightgcn", "lightgcn+wrapped"] and s["draw_ids"] == [1]
    for name in s["models"]:
        cost = s["table"][name]["cost"]
        assert cost["seconds_per_epoch"] > 0 and cost["train_seconds"] >= cost["seconds_per_epoch"]
    assert "| lightgcn+wrapped |" in p.stdout and "Draw level" in p.stdout
