"""What the frozen report (issue 35) needs from ``motorec compare``: token statistics per row, per-row draw
counts (``--draws-for``) with paired statistics on the shared draws, one catalog per output directory (synthetic
specs included), and several output directories tabulated side by side (``--collect``)."""
import json
from pathlib import Path

import pytest

from motorec.eval.stats import bootstrap_ratio_ci, wilcoxon_signed_rank
from motorec.experiments import compare
from motorec.experiments.errors import ArgumentError

SPEC = "synthetic:users=60,items=200,interactions=900,noise=2,seed=1"


def _block(r20):
    return {"recall@10": r20 / 2, "ndcg@10": r20 / 3, "recall@20": r20, "ndcg@20": r20 / 4, "num_users": 10}


def _arg(cmd, flag):
    return cmd[cmd.index(flag) + 1] if flag in cmd else None


def _models(cmd):
    return [cmd[i + 1] for i, a in enumerate(cmd) if a == "--model"]


# MoToRec's train.log as the trainer writes it: pretraining lines, a first joint epoch without churn, two with it
# (epoch 3 logged twice: a resumed run; its last line counts), another model's line and the closing lines
_LOG = """00:00:01 data: synthetic (cold split): 60 users
00:00:02 motorec epoch 0 stage=pretrain seconds_pretrain=0.1 rec=2.0 churn_image=0.0 churn_image_level0=0.0
00:00:03 motorec epoch 1 stage=joint seconds=0.1 loss=1.0 seconds_catalog=0.0 valid_cold_recall@20=0.1
00:00:04 motorec epoch 2 stage=joint seconds=0.1 churn_image=0.9000 churn_image_level0=0.5000 churn_text=0.7000 churn_text_level0=0.3000 peak_rss_mb=1.0
00:00:05 motorec epoch 3 stage=joint seconds=0.1 churn_image=0.8000 churn_image_level0=0.4000 churn_text=0.6000 churn_text_level0=0.2000
00:00:06 resumed motorec from last.pt at epoch 3
00:00:07 motorec epoch 3 stage=joint seconds=0.1 churn_image=0.4000 churn_image_level0=0.2000 churn_text=0.2000 churn_text_level0=0.0000
00:00:08 lightgcn epoch 2 stage=joint seconds=0.1 churn_image=0.0000 churn_image_level0=0.0000
00:00:09 motorec: reached the epoch cap (3 joint epochs) without early stopping
00:00:10 motorec test: cold R@20=0.3
"""
# per run: churn (0.8 + 0.3) / 2, level 0 (0.4 + 0.1) / 2; perplexity 25 + draw, unused codes 0.25
CHURN, CHURN0, UNUSED = 0.55, 0.25, 0.25


def _fake(calls, test=lambda model, draw: {"motorec": 0.30, "knn": 0.20}.get(model, 0.1) + 0.01 * draw):
    """A stand-in for the worker subprocess: writes config.yaml, run.json (the --data), metrics.json (test
    Recall@20 ``test(model, draw)`` in every setting) and, for a quantized MoToRec, ``model_stats`` (two
    modalities x two levels) and a train.log with churn lines (:data:`_LOG`)."""
    import yaml

    class Done:
        returncode = 0

    def run(cmd, **kw):
        calls.append(cmd)
        out = Path(_arg(cmd, "--out"))
        cfg = yaml.safe_load(Path(_arg(cmd, "--config")).read_text()) if "--config" in cmd else {}
        cfg.setdefault("train", {}).setdefault("lr", 1e-3)
        cfg.setdefault("model", {}).setdefault("lambda_reg", 1e-4)
        (out / "config.yaml").write_text(yaml.safe_dump(cfg))
        draw = int(_arg(cmd, "--split-seed"))
        (out / "run.json").write_text(json.dumps({"data": _arg(cmd, "--data"), "split": "cold", "data_seed": draw}))
        quantized = not (cfg.get("motorec") or {}).get("continuous", False)
        m, log = {}, ""
        for name in _models(cmd):
            t = test(name, draw)
            m[name] = {"valid": {k: _block(0.3) for k in ("warm", "cold", "hybrid")},
                       "test": {k: _block(t) for k in ("cold", "warm", "hybrid", "hybrid_warm", "hybrid_cold")},
                       "seconds_per_epoch": 1.0, "epochs_run": 3}
            if name == "motorec" and quantized:
                m[name]["model_stats"] = {
                    **{f"perplexity_{mod}_level{lv}": 10.0 * (1 + 2 * i + lv) + draw
                       for i, mod in enumerate(("image", "text")) for lv in (0, 1)},
                    **{f"unused_codes_{mod}_level{lv}": 0.1 * (1 + 2 * i + lv)
                       for i, mod in enumerate(("image", "text")) for lv in (0, 1)}}
                log = _LOG
        (out / "metrics.json").write_text(json.dumps(m))
        (out / "train.log").write_text(log)
        return Done()

    return run


def _section(md, title):
    """The table rows (first cell) of the markdown section whose paragraph starts with ``title``."""
    lines = md.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith(title))
    rows = []
    for ln in lines[start + 2:]:
        if not ln.startswith("|"):
            break
        rows.append(ln.split("|")[1].strip())
    return rows[2:]


def test_token_statistics_per_row_in_summary_json_and_md(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(compare.subprocess, "run", _fake(calls))
    s = compare.run_compare(tmp_path, models=["motorec", "knn"], draws=2, variants=["plain", "wrapped"],
                            ablations=True, progress=False)
    quantized = ["motorec", "motorec+wrapped", "motorec-no_sparse", "motorec-no_rarity", "motorec-no_item_item"]
    for name in quantized:
        t = s["table"][name]["tokens"]
        # perplexity: mean over modalities and levels (10, 20, 30, 40) + draw, then over draws 0 and 1
        assert t == {"perplexity": pytest.approx(25.5), "unused_codes": pytest.approx(UNUSED),
                     "churn": pytest.approx(CHURN), "churn_level0": pytest.approx(CHURN0)}
    for name in ("knn", "knn+wrapped", "motorec-continuous", "motorec-no_tokenizer"):
        assert s["table"][name]["tokens"] is None
    assert json.loads((tmp_path / "summary.json").read_text())["table"]["motorec"]["tokens"]["churn"] == \
        pytest.approx(CHURN)
    md = (tmp_path / "summary.md").read_text()
    assert _section(md, "Tokens") == quantized  # rows without token statistics are left out, not zeros
    assert "| motorec+wrapped | 2 | 25.50 | 0.250 | 0.550 | 0.250 |" in md


def test_token_stats_of_one_run_without_a_log(tmp_path):
    entry = {"model_stats": {"perplexity_meta_level0": 4.0, "perplexity_meta_level1": 8.0,
                             "unused_codes_meta_level0": 0.5, "unused_codes_meta_level1": 0.0}}
    t = compare.token_stats(entry, tmp_path / "train.log", "motorec")
    assert t == {"perplexity": 6.0, "unused_codes": 0.25, "churn": None, "churn_level0": None}
    (tmp_path / "train.log").write_text(_LOG)
    assert compare.token_stats({}, tmp_path / "train.log", "motorec") == {
        "perplexity": None, "unused_codes": None, "churn": pytest.approx(CHURN), "churn_level0": pytest.approx(CHURN0)}
    assert compare.token_stats({}, tmp_path / "train.log", "lightgcn")["churn"] == 0.0


KNN = {0: 0.35, 1: 0.34, 2: 0.10, 3: 0.10}


def _knn_strong_early(model, draw):
    return 0.30 + 0.01 * draw if model == "motorec" else KNN[draw]


def test_draws_for_runs_fewer_draws_and_pairs_on_shared_draws(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(compare.subprocess, "run", _fake(calls, _knn_strong_early))
    kw = dict(models=["motorec", "knn"], draws=4, variants=["wrapped"], progress=False)
    s = compare.run_compare(tmp_path, draws_for="knn=2", **kw)
    ran = sorted((Path(_arg(c, "--out")).name, int(_arg(c, "--split-seed"))) for c in calls)
    assert ran == sorted([("knn+wrapped", d) for d in (0, 1)] + [("motorec+wrapped", d) for d in range(4)])
    assert s["row_draws"]["knn+wrapped"] == [0, 1] and s["row_draws"]["motorec+wrapped"] == [0, 1, 2, 3]
    assert s["table"]["motorec+wrapped"]["cold"]["recall@20"]["mean"] == pytest.approx(0.315)  # its own 4 draws
    r = s["draw_stats"]["cold"]["rows"]["motorec+wrapped"]["recall@20"]
    # paired on draws 0 and 1 only (over all four draws knn would lose 2 of them)
    a, b = [0.30, 0.31], [0.35, 0.34]
    assert r["n"] == 2 and r["wins"] == 0 and r["losses"] == 2
    assert r["ratio"] == pytest.approx(sum(a) / sum(b))
    assert r["p_value"] == wilcoxon_signed_rank(a, b)["p_value"]
    ci = bootstrap_ratio_ci(a, b)
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((ci["low"], ci["high"]))
    assert s["tests"]["cold"]["draws"] == 2 and s["tests"]["cold"]["recall@20"]["ratio"] == pytest.approx(r["ratio"])
    md = (tmp_path / "summary.md").read_text()
    main_rows = {ln.split("|")[1].strip(): ln.rstrip().rsplit("|", 2)[1].strip()
                 for ln in md.splitlines() if ln.startswith("| ") and "±" in ln and ln.count("|") > 8}
    assert main_rows["knn+wrapped"] == "2" and main_rows["motorec+wrapped"] == "4"  # the draws column
    assert "| knn+wrapped | 0.3500 | 0.3400 | - | - |" in md and "| 0/2 |" in md
    assert "--draws-for knn=2" in s["provenance"]["command"]
    # resumable: more draws for knn later adds only its missing runs
    calls.clear()
    s = compare.run_compare(tmp_path, draws_for={"knn": 3}, **kw)
    assert [(Path(_arg(c, "--out")).name, _arg(c, "--split-seed")) for c in calls] == [("knn+wrapped", "2")]
    assert s["draw_stats"]["cold"]["rows"]["motorec+wrapped"]["recall@20"]["n"] == 3


def test_draws_for_keys_and_errors(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(compare.subprocess, "run", _fake(calls))
    # a model key covers all its rows, "ablations" every ablation row, a row's own name beats both
    s = compare.run_compare(tmp_path / "a", models=["motorec", "knn"], draws=3, variants=["plain", "wrapped"],
                            ablations=True, draws_for="knn=1,knn+wrapped=2,ablations=1,motorec=2", progress=False)
    counts = {n: len(v) for n, v in s["row_draws"].items() if n in s["models"]}
    assert counts == {"motorec": 2, "motorec+wrapped": 2, "knn": 1, "knn+wrapped": 2,
                      **{f"motorec-{a}": 1 for a in compare.ABLATIONS}}
    for bad, match in (("knn=4", r"knn, knn\+wrapped \(knn=4\) ask for more draws than draws \(3\)"),
                       ("knn+wrapped=9", r"knn\+wrapped \(knn\+wrapped=9\) ask for more draws"),
                       ("lightgcn=2", "'lightgcn' names no row"), ("ablations=1", "'ablations' names no row"),
                       ("knn=0", ">= 1"), ("knn", "ROW=N"), ("knn=1,knn=2", "repeats"), ("knn=two", "integer")):
        calls.clear()
        with pytest.raises(ArgumentError, match=match) as e:
            compare.run_compare(tmp_path / "b", models=["motorec", "knn"], draws=3, variants=["plain", "wrapped"],
                                draws_for=bad, progress=False)
        assert e.value.argument == "draws_for" and calls == []


def test_draws_for_in_the_one_process_layout(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(compare.subprocess, "run", _fake(calls))
    s = compare.run_compare(tmp_path, models=["motorec", "knn"], draws=3, draws_for={"knn": 1}, progress=False)
    assert [(_arg(c, "--split-seed"), _models(c)) for c in calls] == [
        ("0", ["motorec", "knn"]), ("1", ["motorec"]), ("2", ["motorec"])]
    assert s["row_draws"]["knn"] == [0] and s["draw_stats"]["cold"]["rows"]["motorec"]["recall@20"]["n"] == 1
    # the flat log holds every model's lines: MoToRec's churn is read from its own
    assert s["table"]["motorec"]["tokens"]["churn"] == pytest.approx(CHURN) and s["table"]["knn"]["tokens"] is None


def test_synthetic_catalog_one_per_out_and_collect(tmp_path, monkeypatch, capsys):
    from motorec.cli import main

    calls = []
    monkeypatch.setattr(compare.subprocess, "run", _fake(calls, _knn_strong_early))
    ml, syn, rep = tmp_path / "ml", tmp_path / "syn", tmp_path / "report"
    compare.run_compare(ml, models=["motorec", "knn"], draws=3, variants=["wrapped"], draws_for="knn=2",
                        progress=False)
    calls.clear()
    s = compare.run_compare(syn, models=["motorec", "knn"], draws=2, draws_from=1, variants=["wrapped"], data=SPEC,
                            tune=True, own_grids=False, grid_reg=(1e-4,), progress=False)
    # the spec reaches every run, the tuning points (draw 0) and the report draws alike
    assert {_arg(c, "--data") for c in calls} == {SPEC}
    assert {_arg(c, "--split-seed") for c in calls if "/tune/" in _arg(c, "--out")} == {"0"}
    assert s["data"] == SPEC and f"Data: {SPEC}" in (syn / "summary.md").read_text()
    assert "Data: MovieLens-100k (bundled)" in (ml / "summary.md").read_text()
    res = compare.collect([ml, syn], rep)
    assert [c["label"] for c in res["catalogs"]] == ["MovieLens-100k (bundled)", SPEC]
    knn = res["catalogs"][0]["rows"]["knn+wrapped"]["cold"]
    a, b = [0.35, 0.34], [0.30, 0.31]  # knn over the reference on the two draws both have
    assert knn["n"] == 2 and knn["ratio"] == pytest.approx(sum(a) / sum(b)) and knn["strongest"]
    assert knn["p_value"] == wilcoxon_signed_rank(a, b)["p_value"] and knn["mean"] == pytest.approx(0.345)
    ref = res["catalogs"][0]["rows"]["motorec+wrapped"]["cold"]
    assert ref["ratio"] is None and ref["mean"] == pytest.approx(0.31) and ref["n"] == 3
    syn_knn = res["catalogs"][1]["rows"]["knn+wrapped"]["warm"]
    assert syn_knn["n"] == 2 and syn_knn["ratio"] == pytest.approx((0.34 + 0.10) / (0.31 + 0.32))
    md = (rep / "collected.md").read_text()
    assert "| MovieLens-100k (bundled) | motorec+wrapped | 3 | 0.3100 | ref | - |" in md
    assert f"| MovieLens-100k (bundled) | knn+wrapped | 2 | 0.3450* | {sum(a) / sum(b):.3f} [" in md
    assert f"| {SPEC} | knn+wrapped | 2 |" in md and str(syn) in md
    assert json.loads((rep / "collected.json").read_text()) == json.loads(json.dumps(res))

    # the command line: --collect trains nothing and prints the table; a directory without a summary is named
    calls.clear()
    assert main(["compare", "--collect", str(ml), str(syn), "--out", str(tmp_path / "rep2")]) == 0
    printed = capsys.readouterr().out
    assert calls == [] and md in printed and "collected.md" in printed
    assert main(["compare", "--collect", str(ml), str(tmp_path / "nothing"), "--out", str(tmp_path / "r3")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--collect" in err[0] and "nothing" in err[0] and "summary.json" in err[0]
    # one catalog per output directory: another spec is refused before anything runs; the same one reordered is not
    calls.clear()
    with pytest.raises(compare.CompareError, match="one output directory holds one catalog"):
        compare.run_compare(syn, models=["motorec", "knn"], draws=2, draws_from=1, variants=["wrapped"],
                            data=SPEC.replace("noise=2", "noise=3"), tune=True, own_grids=False, grid_reg=(1e-4,),
                            progress=False)
    compare.run_compare(syn, models=["motorec", "knn"], draws=2, draws_from=1, variants=["wrapped"],
                        data="synthetic:seed=1,noise=2,users=60,items=200,interactions=900", tune=True,
                        own_grids=False, grid_reg=(1e-4,), progress=False)
    assert calls == []


def test_cli_draws_for(tmp_path, monkeypatch, capsys):
    from motorec.cli import main

    calls = []
    monkeypatch.setattr(compare.subprocess, "run", _fake(calls))
    base = ["compare", "--out", str(tmp_path / "o"), "--model", "motorec", "--model", "knn", "--variants", "wrapped",
            "--draws", "2", "--quiet"]
    assert main(base + ["--draws-for", "knn=3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--draws-for" in err[0] and "knn" in err[0] and "--draws (2)" in err[0] and calls == []
    assert main(base + ["--draws-for", "knn=1"]) == 0
    assert sorted((_models(c)[0], _arg(c, "--split-seed")) for c in calls) == [
        ("knn", "0"), ("motorec", "0"), ("motorec", "1")]
    assert "Tokens" in capsys.readouterr().out


@pytest.mark.slow
def test_real_tiny_token_statistics_and_draws_for(tmp_path):
    """For real (seconds): MoToRec's model_stats and train.log churn lines as the trainer writes them, read into
    the summary; knn on one draw of two."""
    import subprocess
    import sys

    from motorec.config import Config

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))
    from _mmrec import subprocess_env

    out = tmp_path / "cmp"
    p = subprocess.run([sys.executable, "-m", "motorec", "compare", "--model", "motorec", "--model", "knn",
                        "--variants", "wrapped", "--epochs", "3", "--draws", "2", "--draws-for", "knn=1",
                        "--data", SPEC, "--out", str(out), "--quiet"], env=subprocess_env(), capture_output=True,
                       text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    s = json.loads((out / "summary.json").read_text())
    assert s["row_draws"]["knn+wrapped"] == [0] and s["row_draws"]["motorec+wrapped"] == [0, 1]
    t = s["table"]["motorec+wrapped"]["tokens"]
    k = Config().to_dict()["motorec"]["codebook_size"]
    assert 1.0 <= t["perplexity"] <= k and 0.0 <= t["unused_codes"] < 1.0
    # a first-level change is a change: level-0 churn never exceeds the any-level churn
    assert 0.0 <= t["churn_level0"] <= t["churn"] <= 1.0
    assert s["table"]["knn+wrapped"]["tokens"] is None
    assert "Tokens" in p.stdout and "| motorec+wrapped | 2 |" in p.stdout
