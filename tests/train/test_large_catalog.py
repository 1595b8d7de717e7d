"""The large-catalog settings: ``train.eval_users`` (validation on a fixed, seeded sample of users; the final
report on all of them), the standard error of the selection score, the per-stage times and peak memory of the
trainer's log rows and result, ``configs/large.yaml`` through ``motorec train``, and ``bench_scale`` at a tiny
size."""
from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from motorec.config import Config, ConfigError
from motorec.data import synthetic
from motorec.eval import evaluate
from motorec.eval.metrics import mean_of_means_se, mean_se, sample_users
from motorec.train import Trainer, cpu_allocator
from motorec.train.trainer import select_score_se

ROOT = Path(__file__).resolve().parents[2]
SMALL = {"motorec": dict(codebook_size=16, latent_dim=16, hidden_dims=[32], knn_k=5, knn_rebuild_every=2)}


@pytest.fixture(scope="module")
def ds():
    return synthetic(200, 150, num_topics=6, modalities={"image": 16, "text": 8}, seed=2)


def _cfg(name="lightgcn", epochs=3, **train):
    return Config().replace(model={"name": name, "dim": 16}, **SMALL,
                            train={"epochs": epochs, "pretrain_epochs": 1, "batch_size": 256, "patience": 0,
                                   "lr": 5e-3, "seed": 4, **train})


def _recording():
    calls = []

    def record(*a, **k):
        calls.append((k["split"], k.get("users"), k.get("per_user", False)))
        return evaluate(*a, **k)
    return calls, record


def test_eval_users_config_field():
    assert Config().train.eval_users == 0
    assert Config().replace(train={"eval_users": 500}).train.eval_users == 500
    for bad in (-1, 1.5, True, "10"):
        with pytest.raises(ConfigError, match="train.eval_users"):
            Config().replace(train={"eval_users": bad})


def test_validation_ranks_a_fixed_seeded_sample_and_the_final_report_all_users(ds):
    calls, record = _recording()
    r = Trainer(_cfg(eval_users=30), ds, quiet=True, evaluate_fn=record).fit()
    during = [c for c in calls if c[2]]
    assert len(during) == 3 and all(split == "valid" for split, _, _ in during)
    expect = sample_users(ds, "valid", 30, seed=4)
    assert expect.numel() == 30
    for _, users, _ in during:  # the same sample every epoch, drawn from train.seed
        assert torch.equal(users, expect)
    final = [c for c in calls if not c[2]]
    assert [c[0] for c in final] == ["valid", "test"] and all(c[1] is None for c in final)
    # the final report ranks every user: as many as the held-out users, more than the sample
    assert r["valid"]["hybrid"]["num_users"] > 30
    rows = [h for h in r["history"] if "select_score" in h]
    assert all(h["select_score_se"] > 0 for h in rows)
    # another seed, another sample
    calls2, record2 = _recording()
    Trainer(_cfg(epochs=1, eval_users=30, seed=5), ds, quiet=True, evaluate_fn=record2).fit()
    assert not torch.equal(next(c[1] for c in calls2 if c[2]), expect)


def test_eval_users_covering_everyone_is_the_full_validation(ds):
    held = torch.unique(ds.valid[:, 0]).numel()
    full = Trainer(_cfg(), ds, quiet=True).fit()
    every = Trainer(_cfg(eval_users=held), ds, quiet=True).fit()
    keys = ("select_score", "select_score_se", "valid_cold_recall@20", "valid_warm_recall@20", "loss")
    assert [[h[k] for k in keys] for h in every["history"]] == [[h[k] for k in keys] for h in full["history"]]
    assert every["valid"] == full["valid"] and every["test"] == full["test"]
    sampled = Trainer(_cfg(eval_users=held - 40), ds, quiet=True).fit()
    assert [h["loss"] for h in sampled["history"]] == [h["loss"] for h in full["history"]]  # training unchanged
    assert [h["select_score"] for h in sampled["history"]] != [h["select_score"] for h in full["history"]]


def test_select_score_se_follows_the_rule_hand_case():
    def part(users, values):
        return {"users": torch.tensor(users), "recall@20": torch.tensor(values, dtype=torch.float64)}

    per = {"warm": part([0, 1, 2], [1.0, 0.0, 1.0]), "cold": part([1, 0, 4], [0.0, 1.0, 0.0]),
           "hybrid": part([0, 1, 2, 4], [0.5, 0.0, 1.0, 0.0])}
    # warm [1, 0, 1], cold [1, 0, 0] on users 0, 1, 4 (0 and 1 shared): Var = (1/9 + 1/9 + 2/9) / 4
    assert select_score_se(per, "warm_cold_mean") == pytest.approx(1 / 3, abs=1e-15)
    assert select_score_se(per, "warm") == pytest.approx(math.sqrt(1 / 3) / math.sqrt(3), abs=1e-15)
    assert select_score_se(per, "hybrid") == mean_se(per["hybrid"]["recall@20"])
    no_cold = dict(per, cold=part([], []))
    assert select_score_se(no_cold, "warm_cold_mean") == select_score_se(per, "warm")
    assert select_score_se(no_cold, "cold") == select_score_se(per, "hybrid")  # select_score's fallback
    assert select_score_se(per, "warm_cold_mean") == mean_of_means_se(
        per["warm"]["users"], per["warm"]["recall@20"], per["cold"]["users"], per["cold"]["recall@20"])


def test_the_logged_se_is_that_of_the_validation_per_user_values(ds):
    seen = []

    def record(*a, **k):
        res = evaluate(*a, **k)
        if k.get("per_user"):
            seen.append(select_score_se(res["per_user"], "warm_cold_mean"))
        return res

    r = Trainer(_cfg(eval_users=50), ds, quiet=True, evaluate_fn=record).fit()
    rows = [h for h in r["history"] if "select_score" in h]
    assert [h["select_score_se"] for h in rows] == seen and all(0 < se < 1 for se in seen)


def test_stage_times_and_peak_memory_in_rows_and_result(ds, tmp_path):
    r = Trainer(_cfg("motorec", epochs=3), ds, quiet=True, checkpoint_dir=tmp_path).fit()
    pre = [h for h in r["history"] if h["stage"] == "pretrain"]
    joint = [h for h in r["history"] if h["stage"] == "joint"]
    assert len(pre) == 1 and len(joint) == 3
    for h in r["history"]:
        assert h["peak_rss_mb"] > 10 and h["seconds_checkpoint"] >= 0
    assert pre[0]["seconds_pretrain"] >= 0
    for h in joint:
        for k in ("seconds", "seconds_epoch_start", "seconds_steps", "seconds_valid", "seconds_catalog",
                  "seconds_knn"):
            assert h[k] >= 0, k
        assert h["seconds"] == pytest.approx(h["seconds_epoch_start"] + h["seconds_steps"])
        assert h["seconds_catalog"] + h["seconds_knn"] <= h["seconds_epoch_start"] + 1e-6
    # MoToRec re-encodes its catalog every joint epoch (its token cache) and rebuilds the kNN graphs every 2nd
    assert all(h["seconds_catalog"] > 0 for h in joint)
    assert [h["seconds_knn"] > 0 for h in joint] == [True, False, True]
    peaks = [h["peak_rss_mb"] for h in r["history"]]
    assert peaks == sorted(peaks) and r["peak_rss_mb"] >= peaks[-1]
    sec = r["seconds"]
    assert set(sec) == {"pretrain", "epoch_start", "steps", "catalog", "knn", "valid", "checkpoint",
                        "final_valid", "test"}
    assert all(v >= 0 for v in sec.values()) and sec["test"] > 0
    assert sec["steps"] == pytest.approx(sum(h["seconds_steps"] for h in joint))


def test_large_config_loads_and_trains_through_the_cli(tmp_path):
    import motorec.models  # noqa: F401  (registers the per-model config sections)

    cfg = Config.load(ROOT / "configs" / "large.yaml")
    assert cfg.train.eval_users == 10000 and cfg.settings("motorec").knn_rebuild_every > 5
    assert cfg.train.propagation == "history" and cfg.train.fanout == 16
    out = tmp_path / "out"
    p = subprocess.run([sys.executable, "-m", "motorec", "train", "--config", str(ROOT / "configs" / "large.yaml"),
                        "--data", "synthetic:users=60,items=200,interactions=900", "--epochs", "1",
                        "--model", "motorec", "--model", "lightgcn", "--out", str(out), "--quiet", "--threads", "1"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    log = (out / "train.log").read_text()
    for name in ("motorec", "lightgcn"):
        assert f"{name}: seconds per stage" in log and "select_score_se=" in log
    assert "seconds_catalog=" in log and "peak_rss_mb=" in log
    allocator = cpu_allocator()  # the run's process inherits this one's environment (LD_PRELOAD)
    assert f"allocator: {allocator}" in log
    # bench_scale --from-run: the run's rows, from its log (its one joint epoch, the kNN build apart)
    csv_path = tmp_path / "scale.csv"
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_scale.py"), "--from-run", str(out),
                        "--csv", str(csv_path), "--no-plot", "--git-sha", "abc123"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    with csv_path.open() as f:
        rows = {r["model"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"motorec", "lightgcn"}
    joint = [line for line in log.splitlines() if " motorec epoch " in line and "stage=joint" in line][-1]
    values = dict(kv.split("=") for kv in joint.split() if "=" in kv)
    m = rows["motorec"]
    assert (int(m["items"]), int(m["users"]), m["git_sha"], m["epochs"]) == (200, 60, "abc123", "1")
    assert float(m["seconds_knn"]) == pytest.approx(float(values["seconds_knn"]), abs=1e-3) and float(m["seconds_knn"]) > 0
    assert float(m["seconds_epoch"]) == pytest.approx(float(values["seconds"]) - float(values["seconds_knn"]), abs=2e-3)
    assert float(m["seconds_step_total"]) == pytest.approx(float(values["seconds_steps"]), abs=1e-3)
    assert float(rows["lightgcn"]["seconds_knn"]) == 0 and float(m["peak_rss_mb"]) > 10
    assert m["allocator"] == allocator
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_scale.py"), "--from-run", str(tmp_path),
                        "--csv", str(csv_path), "--no-plot"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert p.returncode != 0


def test_bench_scale_tiny(tmp_path):
    out = tmp_path / "scale.csv"
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_scale.py"), "--items", "300,600",
                        "--models", "lightgcn,motorec", "--tiny", "--steps", "2", "--csv", str(out),
                        "--plot", str(tmp_path / "p.png")],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    with out.open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["model"], int(r["items"])) for r in rows] == [("lightgcn", 300), ("motorec", 300),
                                                              ("lightgcn", 600), ("motorec", 600)]
    for r in rows:
        assert int(r["users"]) == int(r["items"]) // 10 and int(r["interactions"]) == int(r["items"])
        for k in ("seconds_step_total", "seconds_catalog", "seconds_valid", "peak_rss_mb"):
            assert float(r[k]) >= 0, k
        assert float(r["peak_rss_mb"]) > 10
        assert int(r["steps"]) == 2 and int(r["batch_size"]) < (150 if r["items"] == "300" else 300)
        assert r["allocator"] == cpu_allocator()  # the workers inherit the environment
    assert "growth exponent" in p.stdout and (tmp_path / "p.png").stat().st_size > 1000
    fits = json.loads((tmp_path / "scale_steps2.json").read_text())["fits"]
    assert set(fits) == {"lightgcn", "motorec"} and fits["motorec"]["items"] == [300, 600]
    assert math.isfinite(fits["motorec"]["exponent_epoch"])
    # --refit: the fit and plot again from the CSV alone, no run
    (tmp_path / "p.png").unlink()
    refit = [sys.executable, str(ROOT / "benchmarks" / "bench_scale.py"), "--refit", "--csv", str(out)]
    p = subprocess.run(refit + ["--steps", "2", "--plot", str(tmp_path / "p.png")], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    assert len(out.read_text().splitlines()) == 5 and (tmp_path / "p.png").exists()
    # rows of the config's batch size are fitted apart from those of fixed steps: there are none here
    p = subprocess.run(refit, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert p.returncode == 1 and "no rows" in p.stderr


def test_gpu_epoch_rows_on_cpu_and_a_wrong_row_is_not_timed(tmp_path, monkeypatch):
    """benchmarks/gpu_epoch (the GPU check's 1M-item epoch) at a tiny size on the CPU: a row per configuration,
    each checked against the torch reference first; a row whose first loss disagrees is refused, not written."""
    import benchmarks.gpu_epoch as ge

    args = ["--device", "cpu", "--items", "400", "--tiny", "--rows",
            "motorec auto,motorec auto bf16,lightgcn auto,motorec auto full,lightgcn auto full"]
    assert ge.main(args + ["--out", str(tmp_path / "ok")]) == 0
    with (tmp_path / "ok" / "gpu_epoch.csv").open() as f:
        rows = list(csv.DictReader(f))
    # the full rows read every neighbour: the config's fanout cap is for history steps alone
    assert [(r["row"], r["propagation"], r["fanout"]) for r in rows] == [
        ("motorec auto", "history", "16"), ("motorec auto bf16", "history", "16"), ("lightgcn auto", "history", "16"),
        ("motorec auto full", "full", "0"), ("lightgcn auto full", "full", "0")]
    for r in rows:
        assert int(r["steps"]) >= 1 and float(r["seconds_steps"]) > 0 and 0 <= float(r["motorec_op_fraction"]) <= 1
        assert abs(float(r["first_loss"]) - float(r["reference_loss"])) <= ge.BF16_TOL * max(1, float(r["reference_loss"]))
        # a step runs motorec's ops unless it is a history step of LightGCN (no tokenizer, no propagation kernel)
        assert (float(r["motorec_op_fraction"]) > 0) == (r["row"] != "lightgcn auto")
    assert float(rows[0]["seconds_knn"]) > 0 and float(rows[2]["seconds_knn"]) == 0
    assert rows[3]["reference_loss"] != rows[0]["reference_loss"]  # each propagation has its own reference
    real = ge.reference_loss
    monkeypatch.setattr(ge, "reference_loss", lambda *a, **k: real(*a, **k) + 1.0)
    with pytest.raises(RuntimeError, match="not timed"):
        ge.main(args[:6] + ["motorec auto", "--out", str(tmp_path / "bad")])
    assert not (tmp_path / "bad" / "gpu_epoch.csv").exists() or len(
        (tmp_path / "bad" / "gpu_epoch.csv").read_text().splitlines()) <= 1


def test_step_scaling_prints_a_row_per_size(tmp_path):
    """benchmarks/step_scaling (the history-steps study's per-step table) at tiny sizes, both propagations."""
    for prop in ("history", "full"):
        p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "step_scaling.py"), "--items", "300,600",
                            "--model", "lightgcn_content", "--propagation", prop, "--batch-size", "64", "--steps", "3",
                            "--threads", "1"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr[-3000:]
        rows = [line for line in p.stdout.splitlines() if line.startswith("lightgcn_content ")]
        assert [r.split()[2] for r in rows] == ["items=300", "items=600"] and all(prop in r for r in rows)
        assert all("distinct neighbours=" in r and "step median=" in r for r in rows)
