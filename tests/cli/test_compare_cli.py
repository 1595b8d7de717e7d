"""``motorec compare``: flags reach :func:`motorec.eval.compare.run_compare` and each run's ``motorec train``
command, the summary is printed, failures and bad flags give one line; one real tiny run on the bundled data."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from motorec.eval import compare

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))
from _mmrec import subprocess_env  # noqa: E402


def _fake_train(calls, fail=()):
    """A stand-in for the per-run ``motorec train`` subprocess: records the command and writes a metrics.json
    with every setting (recall@20 = the draw's number + a per-model offset)."""

    class Done:
        def __init__(self, rc):
            self.returncode = rc

    def run(cmd, **kw):
        calls.append(cmd)
        out = Path(cmd[cmd.index("--out") + 1])
        draw = int(cmd[cmd.index("--split-seed") + 1])
        if draw in fail:
            return Done(4)
        models = [cmd[i + 1] for i, a in enumerate(cmd) if a == "--model"]
        m = {}
        for j, name in enumerate(models):
            v = 0.1 + 0.01 * draw + 0.05 * j
            block = {"recall@10": v / 2, "ndcg@10": v / 3, "recall@20": v, "ndcg@20": v / 4}
            m[name] = {"test": {k: dict(block) for k in ("cold", "warm", "hybrid", "hybrid_warm", "hybrid_cold")}}
        (out / "metrics.json").write_text(json.dumps(m))
        return Done(0)

    return run


def test_compare_passes_flags_and_prints_summary(tmp_path, monkeypatch, capsys):
    from motorec.cli import COMPARE_MODELS, main

    calls = []
    monkeypatch.setattr(compare.subprocess, "run", _fake_train(calls))
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: {cold_calibration: 1.0}\n")
    out = tmp_path / "cmp"
    args = ["compare", "--out", str(out), "--draws", "2", "--seeds", "2", "--epochs", "3", "--config", str(cfg),
            "--threads", "2", "--backend", "torch", "--device", "cpu", "--quiet"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert len(calls) == 4  # 2 draws x 2 seeds, one subprocess each
    plan = sorted((c[c.index("--split-seed") + 1], c[c.index("--seed") + 1]) for c in calls)
    assert plan == [("0", "0"), ("0", "1"), ("1", "0"), ("1", "1")]
    for c in calls:
        assert [c[i + 1] for i, a in enumerate(c) if a == "--model"] == list(COMPARE_MODELS)
        for flag, v in (("--epochs", "3"), ("--config", str(cfg.resolve())), ("--threads", "2"),
                        ("--backend", "torch"), ("--device", "cpu")):
            assert c[c.index(flag) + 1] == v
    assert COMPARE_MODELS == ("motorec", "lightgcn", "lightgcn_content", "content", "knn", "aldi")
    md = (out / "summary.md").read_text()
    assert md in printed and "summary.json" in printed
    s = json.loads((out / "summary.json").read_text())
    assert s["draws"] == 2 and s["seeds"] == 2 and s["models"] == list(COMPARE_MODELS)
    # aldi is the last model: the fake gives it the highest numbers, so it is motorec's strongest rival
    assert s["tests"]["cold"]["against"] == "aldi"
    # fake recall@20 of motorec on draw d = 0.1 + 0.01 d
    assert s["table"]["motorec"]["cold"]["per_draw"]["recall@20"] == pytest.approx([0.10, 0.11])

    # re-running resumes: every run is finished, so nothing is started again
    calls.clear()
    assert main(args) == 0
    assert calls == []


def test_compare_models_flag_and_failed_run(tmp_path, monkeypatch, capsys):
    from motorec.cli import main

    calls = []
    monkeypatch.setattr(compare.subprocess, "run", _fake_train(calls, fail=(1,)))
    out = tmp_path / "cmp"
    rc = main(["compare", "--out", str(out), "--draws", "2", "--model", "lightgcn", "--model", "knn", "--quiet"])
    assert rc == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "draw 1 seed 0 (exit 4" in err[0]
    assert [calls[0][i + 1] for i, a in enumerate(calls[0]) if a == "--model"] == ["lightgcn", "knn"]
    assert "--epochs" not in calls[0] and "--config" not in calls[0]
    assert (out / "runs" / "draw0_seed0" / "metrics.json").is_file()  # the finished run stays


@pytest.mark.parametrize("args, match", [
    (["--draws", "0"], "--draws must be >= 1"),
    (["--jobs", "0"], "--jobs must be >= 1"),
    (["--model", "nope"], "invalid choice"),
    (["--data", "/no/such/dir"], "is not a directory"),
], ids=["draws", "jobs", "model", "data"])
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
    assert len(err) == 1 and "select_group" in err[0] and "train.select" in err[0]


@pytest.mark.slow
def test_compare_real_tiny_run_on_bundled_data(tmp_path):
    """One real run (takes seconds): lightgcn, one epoch, one draw, through the subprocess path."""
    out = tmp_path / "cmp"
    p = subprocess.run([sys.executable, "-m", "motorec", "compare", "--model", "lightgcn", "--epochs", "1",
                        "--draws", "1", "--out", str(out), "--quiet"], env=subprocess_env(), capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    m = json.loads((out / "runs" / "draw0_seed0" / "metrics.json").read_text())
    assert set(m["lightgcn"]["test"]) == {"cold", "warm", "hybrid", "hybrid_warm", "hybrid_cold"}
    s = json.loads((out / "summary.json").read_text())
    assert set(s["table"]) == {"lightgcn", "random", "popularity_oracle"}
    r = s["table"]["lightgcn"]["warm"]["recall@20"]["mean"]
    assert r == m["lightgcn"]["test"]["warm"]["recall@20"] and 0.0 < r <= 1.0
    assert "| lightgcn |" in p.stdout and "| popularity_oracle |" in p.stdout
