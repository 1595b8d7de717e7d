"""motorec.eval.compare: the multi-run summary (means, spread, per-draw means, paired tests, scale rows) and the
resumable run loop."""
import json
import math

import pytest

from motorec.eval import compare
from motorec.eval.stats import wilcoxon_signed_rank


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
    assert s["tests"]["cold"]["recall@20"]["p_value"] == wilcoxon_signed_rank(cold, knn)["p_value"]
    assert s["tests"]["cold"]["recall@20"]["ratio"] == pytest.approx(mean / (sum(knn) / 4))
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
