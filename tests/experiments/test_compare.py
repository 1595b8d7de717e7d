"""motorec.experiments.compare: the multi-run summary (means, spread, per-draw means, paired tests, scale rows) and the
resumable run loop, plain and with equal tuning (--tune)."""
import json
import math
from pathlib import Path

import pytest

from motorec.eval.stats import wilcoxon_signed_rank
from motorec.experiments import compare


def _metrics(cold, warm, hybrid):
    def block(r20):
        return {"recall@10": r20 / 2, "ndcg@10": r20 / 3, "recall@20": r20, "ndcg@20": r20 / 4}
    # evaluate()'s keys; hybrid_warm / hybrid_cold hold numbers that must not be read as the settings
    return {"test": {"cold": block(cold), "warm": block(warm), "hybrid": block(hybrid),
                     "hybrid_warm": block(-1.0), "hybrid_cold": block(-2.0)}}


def _write_runs(out, values):
    """values[(draw, seed)] = {model: (cold, warm, hybrid)}"""
    for (d, s), per in values.items():
        run = out / "runs" / f"draw{d}_seed{s}"
        run.mkdir(parents=True)
        (run / "metrics.json").write_text(json.dumps({m: _metrics(*v) for m, v in per.items()}))


VALUES = {
    (0, 0): {"motorec": (0.30, 0.40, 0.20), "lightgcn": (0.05, 0.41, 0.19), "knn": (0.25, 0.39, 0.18)},
    (0, 1): {"motorec": (0.32, 0.42, 0.21), "lightgcn": (0.04, 0.40, 0.20), "knn": (0.27, 0.38, 0.17)},
    (1, 0): {"motorec": (0.20, 0.38, 0.22), "lightgcn": (0.06, 0.43, 0.21), "knn": (0.22, 0.37, 0.19)},
    (1, 1): {"motorec": (0.24, 0.39, 0.20), "lightgcn": (0.05, 0.44, 0.22), "knn": (0.21, 0.36, 0.18)},
}


def test_summary_means_spread_per_draw_and_tests(tmp_path):
    _write_runs(tmp_path, VALUES)
    s = compare.summarize(tmp_path, models=["motorec", "lightgcn", "knn"], draws=2, seeds=2, scale_rows=False)
    cold = [VALUES[k]["motorec"][0] for k in sorted(VALUES)]
    entry = s["table"]["motorec"]["cold"]["recall@20"]
    mean = sum(cold) / 4
    assert entry["mean"] == pytest.approx(mean)
    assert entry["sd"] == pytest.approx(math.sqrt(sum((v - mean) ** 2 for v in cold) / 3))
    assert s["table"]["motorec"]["cold"]["per_draw"]["recall@20"] == pytest.approx([0.31, 0.22])
    assert s["table"]["knn"]["cold"]["ndcg@20"]["mean"] == pytest.approx((0.25 + 0.27 + 0.22 + 0.21) / 16)
    # strongest other model per setting, by mean Recall@20
    assert s["tests"]["cold"]["against"] == "knn"
    assert s["tests"]["warm"]["against"] == "lightgcn"
    assert s["tests"]["hybrid"]["against"] == "lightgcn"
    knn = [VALUES[k]["knn"][0] for k in sorted(VALUES)]
    # the test is at the draw level: the two seeds of a draw are averaged first (they share its test items)
    draw_mot, draw_knn = [0.31, 0.22], [0.26, 0.215]
    assert s["tests"]["cold"]["recall@20"]["p_value"] == wilcoxon_signed_rank(draw_mot, draw_knn)["p_value"]
    assert s["tests"]["cold"]["recall@20"]["wins"] == 2 and s["tests"]["cold"]["level"] == "draw"
    assert s["tests"]["cold"]["recall@20"]["ratio"] == pytest.approx(mean / (sum(knn) / 4))
    t = s["tests"]["cold"]["recall@20"]
    assert t["ci_low"] <= t["ratio"] <= t["ci_high"]
    ds = s["draw_stats"]["cold"]
    assert ds["against"] == "knn" and ds["rows"]["knn"]["recall@20"]["ratio"] == pytest.approx(1.0)
    assert ds["rows"]["motorec"]["recall@20"]["mean"] == pytest.approx(mean)
    assert ds["rows"]["motorec"]["recall@20"]["sd"] == pytest.approx(math.sqrt((0.31 - mean) ** 2 + (0.22 - mean) ** 2))
    assert ds["rows"]["motorec"]["recall@20"]["wins"] == 2 and ds["rows"]["motorec"]["recall@20"]["n"] == 2
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["tests"]["cold"]["against"] == "knn"
    md = (tmp_path / "summary.md").read_text()
    assert "| motorec |" in md and "Wilcoxon" in md and "draw 1" in md


def test_legacy_metrics_keys_map_to_settings():
    new = {"cold": {"recall@20": 0.3}, "warm": {"recall@20": 0.2}, "hybrid": {"recall@20": 0.1},
           "hybrid_warm": {"recall@20": 0.9}, "hybrid_cold": {"recall@20": 0.8}}
    for st, v in (("cold", 0.3), ("warm", 0.2), ("hybrid", 0.1)):
        assert compare.setting_metrics(new, st)["recall@20"] == v
    # before the settings were the primary report: warm / cold were the shared ranking's groups
    legacy = {"overall": {"recall@20": 0.1}, "warm": {"recall@20": 0.9}, "cold": {"recall@20": 0.8},
              "warm_only": {"recall@20": 0.2}, "cold_only": {"recall@20": 0.3}}
    assert compare.setting_metrics(legacy, "cold")["recall@20"] == 0.3
    assert compare.setting_metrics(legacy, "warm")["recall@20"] == 0.2
    assert compare.setting_metrics(legacy, "hybrid")["recall@20"] == 0.1
    with pytest.raises(ValueError, match="setting"):
        compare.setting_metrics(legacy, "overall")
    with pytest.raises(KeyError, match="cold_only"):
        compare.setting_metrics({"overall": {}}, "cold")


def test_missing_run_is_named(tmp_path):
    _write_runs(tmp_path, {(0, 0): VALUES[(0, 0)]})
    with pytest.raises(FileNotFoundError, match="draw 1 seed 0"):
        compare.summarize(tmp_path, models=["motorec"], draws=2, seeds=1, scale_rows=False)


def test_scale_rows_on_bundled_data(tmp_path):
    _write_runs(tmp_path, {(0, 0): VALUES[(0, 0)]})
    s = compare.summarize(tmp_path, models=["motorec", "knn"], draws=1, seeds=1)
    oracle = s["table"]["popularity_oracle"]
    rand = s["table"]["random"]
    for st in compare.SETTING_NAMES:
        # the oracle peeks at the test split: far above a random ranking in every setting
        assert oracle[st]["recall@20"]["mean"] > 3 * rand[st]["recall@20"]["mean"] > 0


def test_run_compare_skips_finished_runs_and_validates(tmp_path, monkeypatch):
    _write_runs(tmp_path, VALUES)

    def fail(*a, **k):
        raise AssertionError("a finished run was started again")

    monkeypatch.setattr(compare.subprocess, "run", fail)
    s = compare.run_compare(tmp_path, models=["motorec", "lightgcn"], draws=2, seeds=2, progress=False)
    assert s["tests"]["cold"]["against"] == "lightgcn"
    with pytest.raises(ValueError, match="draws"):
        compare.run_compare(tmp_path, models=["motorec"], draws=0)


def test_run_compare_reports_failed_runs(tmp_path, monkeypatch):
    class Done:
        returncode = 3

    calls = []
    monkeypatch.setattr(compare.subprocess, "run", lambda cmd, **k: calls.append(cmd) or Done())
    with pytest.raises(RuntimeError, match="draw 0 seed 0 \\(exit 3"):
        compare.run_compare(tmp_path, models=["lightgcn"], draws=1, seeds=1, epochs=2, progress=False)
    cmd = calls[0]
    assert cmd[cmd.index("--split-seed") + 1] == "0" and cmd[cmd.index("--epochs") + 1] == "2"
    assert "--resume" not in cmd


# ---------------------------------------------------------------------------------------------- --tune
def _block(r20, users=10):
    return {"recall@10": r20 / 2, "ndcg@10": r20 / 3, "recall@20": r20, "ndcg@20": r20 / 4, "num_users": users}


def _fake_train(calls, valid, fail=lambda cmd: False):
    """A stand-in for ``motorec train`` (``subprocess.run``): records the command, writes the run's config.yaml
    (train.lr / model.lambda_reg from ``--config``, the defaults without it) and a metrics.json whose validation
    warm / cold Recall@20 are ``valid(model, lr, reg)`` and whose test numbers depend on the draw."""
    import yaml

    class Done:
        def __init__(self, rc):
            self.returncode = rc

    def run(cmd, **kw):
        calls.append(cmd)
        if fail(cmd):
            return Done(3)
        out = Path(cmd[cmd.index("--out") + 1])
        cfg = yaml.safe_load(Path(cmd[cmd.index("--config") + 1]).read_text()) if "--config" in cmd else {}
        lr = (cfg.get("train") or {}).get("lr", 1e-3)
        reg = (cfg.get("model") or {}).get("lambda_reg", 1e-4)
        (out / "config.yaml").write_text(yaml.safe_dump({"train": {"lr": lr}, "model": {"lambda_reg": reg}}))
        draw = int(cmd[cmd.index("--split-seed") + 1])
        m = {}
        for name in [cmd[i + 1] for i, a in enumerate(cmd) if a == "--model"]:
            warm, cold = valid(name, lr, reg)
            v = 0.1 + 0.01 * draw
            m[name] = {"valid": {"warm": _block(warm), "cold": _block(cold), "hybrid": _block(0.0)},
                       "test": {k: _block(v) for k in ("cold", "warm", "hybrid", "hybrid_warm", "hybrid_cold")}}
        (out / "metrics.json").write_text(json.dumps(m))
        return Done(0)

    return run


def _valid(name, lr, reg):
    """lightgcn: (5e-3, 1e-4) has the best mean of warm and cold, (1e-3, 1e-3) the best warm alone; knn and
    motorec: every point ties."""
    if name == "lightgcn":
        return {(5e-3, 1e-4): (0.40, 0.30), (1e-3, 1e-3): (0.60, 0.00)}.get((lr, reg), (0.30, 0.10))
    return 0.30, 0.20


def _arg(cmd, flag):
    return cmd[cmd.index(flag) + 1] if flag in cmd else None


def _models(cmd):
    return [cmd[i + 1] for i, a in enumerate(cmd) if a == "--model"]


def test_tune_picks_best_point_ties_to_default_and_runs_per_model(tmp_path, monkeypatch):
    from motorec.config import Config

    calls = []
    monkeypatch.setattr(compare.subprocess, "run", _fake_train(calls, _valid))
    s = compare.run_compare(tmp_path, models=["motorec", "lightgcn", "knn"], draws=2, seeds=1, epochs=2,
                            tune=True, own_grids=False, progress=False)
    points = [c for c in calls if "/tune/" in _arg(c, "--out")]
    finals = [c for c in calls if c not in points]
    # stage 1: the 2 x 2 grid for each baseline, never for the reference motorec, on draw 0 / seed 0
    assert sorted((_models(c)[0], Path(_arg(c, "--out")).name) for c in points) == sorted(
        (m, f"lr{lr!r}_reg{reg!r}") for m in ("lightgcn", "knn") for lr in (1e-3, 5e-3) for reg in (1e-4, 1e-3))
    for c in points:
        assert _arg(c, "--split-seed") == "0" and _arg(c, "--seed") == "0" and _arg(c, "--epochs") == "2"
        cfg = Config.load(_arg(c, "--config"))
        assert Path(_arg(c, "--out")).name == f"lr{cfg.train.lr!r}_reg{cfg.model.lambda_reg!r}"
    # stage 2: one subprocess per (draw, seed, model), each model after its own grid points
    assert sorted((_models(c)[0], _arg(c, "--split-seed")) for c in finals) == [
        (m, d) for m in ("knn", "lightgcn", "motorec") for d in ("0", "1")]
    for c in finals:
        m = _models(c)[0]
        assert Path(_arg(c, "--out")) == tmp_path / "runs" / f"draw{_arg(c, '--split-seed')}_seed0" / m
        assert _arg(c, "--config") == (None if m == "motorec" else str((tmp_path / "tune" / f"{m}.yaml").resolve()))
        if m != "motorec":
            assert calls.index(c) > max(calls.index(p) for p in points if _models(p) == [m])
    chosen = json.loads((tmp_path / "tune" / "chosen.json").read_text())
    assert set(chosen) == {"lightgcn", "knn"}
    # the highest validation mean of warm and cold Recall@20 (train.select's default rule) wins ...
    assert (chosen["lightgcn"]["lr"], chosen["lightgcn"]["lambda_reg"]) == (5e-3, 1e-4)
    assert chosen["lightgcn"]["score"] == pytest.approx(0.35)
    assert [p["score"] for p in chosen["lightgcn"]["points"]] == pytest.approx([0.2, 0.3, 0.35, 0.2])
    # ... and a tie keeps the earlier point: the default one
    assert (chosen["knn"]["lr"], chosen["knn"]["lambda_reg"]) == (1e-3, 1e-4)
    assert chosen["knn"]["grid"] == {"lr": [1e-3, 5e-3], "lambda_reg": [1e-4, 1e-3]}
    tuned = Config.load(tmp_path / "tune" / "lightgcn.yaml")
    assert (tuned.train.lr, tuned.model.lambda_reg) == (5e-3, 1e-4)
    # the summary states the grid and each model's setting
    t = s["tuning"]
    assert t["grid"] == {"lr": [1e-3, 5e-3], "lambda_reg": [1e-4, 1e-3]} and t["select"] == "warm_cold_mean"
    assert t["models"]["lightgcn"] == {"tuned": True, "lr": 5e-3, "lambda_reg": 1e-4, "score": pytest.approx(0.35),
                                       "points": chosen["lightgcn"]["points"], "own": {}, "own_points": {}}
    assert t["models"]["motorec"] == {"tuned": False, "lr": 1e-3, "lambda_reg": 1e-4}
    assert json.loads((tmp_path / "summary.json").read_text())["tuning"]["models"]["knn"]["lr"] == 1e-3
    md = (tmp_path / "summary.md").read_text()
    assert "Equal tuning" in md and "warm_cold_mean" in md and "{0.001, 0.005}" in md
    assert "| lightgcn | 0.005 | 0.0001 | - | 0.3500 |" in md and "| knn | 0.001 | 0.0001 | - | 0.2500 |" in md
    assert "| motorec | 0.001 | 0.0001 | - | - | not tuned" in md
    assert s["table"]["lightgcn"]["cold"]["per_draw"]["recall@20"] == pytest.approx([0.10, 0.11])


def test_tune_follows_the_select_rule_of_the_config(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(compare.subprocess, "run", _fake_train(calls, _valid))
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train: {select: warm}\n")
    s = compare.run_compare(tmp_path / "o", models=["lightgcn"], draws=1, config=str(cfg), tune=True,
                            progress=False)
    assert (s["tuning"]["models"]["lightgcn"]["lr"], s["tuning"]["models"]["lightgcn"]["lambda_reg"]) == (1e-3, 1e-3)
    assert s["tuning"]["select"] == "warm"
    final = [c for c in calls if "/runs/" in _arg(c, "--out")]
    assert len(calls) == 5 and len(final) == 1


def test_tune_resume_skips_finished_points_and_runs(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(compare.subprocess, "run", _fake_train(calls, _valid))
    kw = dict(models=["motorec", "lightgcn"], draws=2, tune=True, progress=False)
    first = compare.run_compare(tmp_path, **kw)
    assert len(calls) == 4 + 4
    calls.clear()
    assert compare.run_compare(tmp_path, **kw)["tuning"] == first["tuning"]  # everything finished: no run
    assert calls == []
    # chosen.json lost: rebuilt from the finished grid points, nothing retrained
    chosen = (tmp_path / "tune" / "chosen.json").read_text()
    (tmp_path / "tune" / "chosen.json").unlink()
    compare.run_compare(tmp_path, **kw)
    assert calls == [] and (tmp_path / "tune" / "chosen.json").read_text() == chosen
    # an interrupted grid point (started, no metrics) and an interrupted final run are resumed, nothing else
    (tmp_path / "tune" / "chosen.json").unlink()
    (tmp_path / "tune" / "lightgcn" / "lr0.005_reg0.001" / "metrics.json").unlink()
    (tmp_path / "runs" / "draw1_seed0" / "lightgcn" / "metrics.json").unlink()
    compare.run_compare(tmp_path, **kw)
    assert [(Path(_arg(c, "--out")).relative_to(tmp_path).as_posix(), "--resume" in c) for c in calls] == [
        ("tune/lightgcn/lr0.005_reg0.001", True), ("runs/draw1_seed0/lightgcn", True)]
    assert (tmp_path / "tune" / "chosen.json").read_text() == chosen


def test_tune_refuses_another_grid_and_the_other_layout(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(compare.subprocess, "run", _fake_train(calls, _valid))
    compare.run_compare(tmp_path, models=["lightgcn"], draws=1, tune=True, progress=False)
    calls.clear()
    with pytest.raises(compare.CompareError, match=r"grid lr 0\.001,0\.005 x lambda_reg 0\.0001,0\.001, but this run "
                       r"asks for lr 0\.001,0\.01 x lambda_reg 0\.0001,0\.001"):
        compare.run_compare(tmp_path, models=["lightgcn"], draws=1, tune=True, grid_lr=(1e-3, 1e-2), progress=False)
    with pytest.raises(compare.CompareError, match="made with --tune"):
        compare.run_compare(tmp_path, models=["lightgcn"], draws=1, progress=False)
    other = tmp_path / "flat"
    _write_runs(other, {(0, 0): VALUES[(0, 0)]})
    with pytest.raises(compare.CompareError, match="without --tune"):
        compare.run_compare(other, models=["lightgcn"], draws=1, tune=True, progress=False)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: {dim: 32}\n")
    with pytest.raises(compare.CompareError, match="another --config .*model.dim"):
        compare.run_compare(tmp_path, models=["lightgcn"], draws=1, tune=True, config=str(cfg), progress=False)
    assert calls == []
    # another model's section is not a baseline's setting: its tuning is reused under it (nothing retrained)
    cfg.write_text("motorec: {lambda_cl: 0.9, rarity: false}\nknn: {cold_k: 7}\n")
    compare.run_compare(tmp_path, models=["lightgcn"], draws=1, tune=True, config=str(cfg), progress=False)
    assert calls == []


def test_tune_reference_and_runs_trained_with_another_setting(tmp_path, monkeypatch):
    calls = []
    best_motorec = {(5e-3, 1e-3): (0.5, 0.5)}
    monkeypatch.setattr(compare.subprocess, "run", _fake_train(
        calls, lambda m, lr, reg: best_motorec.get((lr, reg), (0.3, 0.2)) if m == "motorec" else (0.3, 0.2)))
    compare.run_compare(tmp_path, models=["motorec", "knn"], draws=1, tune=True, progress=False)
    # now also tune motorec: its grid runs, and its final run, trained with the defaults, is refused by name
    calls.clear()
    with pytest.raises(RuntimeError, match=r"draw0_seed0/motorec was trained with lr 0\.001, lambda_reg 0\.0001, "
                       r"not the motorec setting lr 0\.005, lambda_reg 0\.001"):
        compare.run_compare(tmp_path, models=["motorec", "knn"], draws=1, tune=True, tune_reference=True,
                            progress=False)
    assert sorted(Path(_arg(c, "--out")).name for c in calls) == ["lr0.001_reg0.0001", "lr0.001_reg0.001",
                                                                  "lr0.005_reg0.0001", "lr0.005_reg0.001"]
    assert json.loads((tmp_path / "tune" / "chosen.json").read_text())["motorec"]["lr"] == 5e-3


def test_tune_failed_point_stops_only_that_model(tmp_path, monkeypatch):
    calls = []
    bad = ("lightgcn", "lr0.005_reg0.001")
    monkeypatch.setattr(compare.subprocess, "run", _fake_train(
        calls, _valid, fail=lambda c: (_models(c)[0], Path(_arg(c, "--out")).name) == bad))
    with pytest.raises(RuntimeError, match=r"tune lightgcn lr0\.005_reg0\.001 \(exit 3; log .*lr0\.005_reg0\.001\.log"):
        compare.run_compare(tmp_path, models=["lightgcn", "knn"], draws=2, tune=True, jobs=2, progress=False)
    finals = sorted(_models(c)[0] for c in calls if "/runs/" in _arg(c, "--out"))
    assert finals == ["knn", "knn"]  # lightgcn has no setting, so no final run
    assert set(json.loads((tmp_path / "tune" / "chosen.json").read_text())) == {"knn"}


def test_grid_values_are_checked():
    assert compare.parse_grid("1e-3, 5e-3", "lr") == (1e-3, 5e-3)
    assert compare.parse_grid("0,1e-4", "lambda_reg") == (0.0, 1e-4)
    for text, key, match in (("abc", "lr", "comma-separated numbers"), ("-1e-3", "lr", "> 0"), ("0", "lr", "> 0"),
                             ("-1e-4", "lambda_reg", ">= 0"), ("nan", "lr", "finite"), ("", "lr", "empty"),
                             ("1e-3,0.001", "lr", "repeats")):
        with pytest.raises(ValueError, match=match):
            compare.parse_grid(text, key)
    assert compare.GRID_LR[0] == 1e-3 and compare.GRID_REG[0] == 1e-4  # the default point comes first
