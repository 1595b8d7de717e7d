"""motorec.experiments called directly (no command line): train_models on a tiny synthetic catalog, then
evaluate_run, recommend and tokenize on the run it wrote; the worker entry of compare; arguments refused by name."""
from __future__ import annotations

import json

import pytest
import torch

import motorec.experiments as api
from motorec.config import Config
from motorec.experiments import ArgumentError, compare, worker

SPEC = "synthetic:users=60,items=80,interactions=900,image=12,text=6"
TINY = {"model": {"dim": 16},
        "motorec": {"latent_dim": 8, "hidden_dims": [16], "num_levels": 2, "codebook_size": 8},
        "train": {"epochs": 2, "pretrain_epochs": 1, "batch_size": 128, "patience": 0, "seed": 0}}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("api") / "run"
    res = api.train_models(["lightgcn", "motorec", "lightgcn"], config=Config.from_dict(TINY), data=SPEC, out=out,
                       quiet=True)
    return out, res


def test_train_models_returns_what_it_wrote(trained):
    out, res = trained
    assert isinstance(res, api.TrainResult) and res.out == out and res.models == ["lightgcn", "motorec"]
    assert res.is_main and not res.left_process_group and res.capped == []
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(res.metrics)) and set(on_disk) == {"lightgcn", "motorec"}
    for name in res.models:
        m = res.metrics[name]
        assert m["epochs_run"] == (3 if name == "motorec" else 2)  # motorec: 1 pre-training epoch too
        assert m["seconds_per_epoch"] > 0 and set(m["test"]) >= {"cold", "warm", "hybrid"}
        assert (out / "checkpoints" / name / "last.pt").is_file()
    info = json.loads((out / "run.json").read_text())
    assert info["data"] == SPEC and info["models"] == ["lightgcn", "motorec"] and info["split"] == "cold"
    assert "text_encoder" in info and info["text_encoder"] is None  # a synthetic catalog encodes no text
    assert res.table().splitlines()[3].split()[0] == "lightgcn"


def test_evaluate_run_gives_the_selected_checkpoints_metrics(trained):
    out, res = trained
    got = api.evaluate_run(out, models=["lightgcn"])
    assert list(got) == ["lightgcn"]
    for split in ("valid", "test"):
        for setting in ("cold", "warm", "hybrid"):
            assert got["lightgcn"][split][setting]["recall@20"] == pytest.approx(
                res.metrics["lightgcn"][split][setting]["recall@20"], abs=1e-9)
    assert set(api.evaluate_run(out)) == {"lightgcn", "motorec"}  # default: every trained model


def test_recommend_and_tokenize(trained, tmp_path):
    out, _ = trained
    r = api.recommend(out, model="lightgcn", top_k=5, users=[3, 1, 3], output=tmp_path / "r.tsv")
    assert (r.k, r.num_users, r.num_items, r.new_items) == (5, 2, 80, 0)
    rows = [line.split("\t") for line in (tmp_path / "r.tsv").read_text().splitlines()[1:]]
    assert [int(u) for u, *_ in rows] == [3] * 5 + [1] * 5
    new = {"image": torch.randn(4, 12), "text": torch.randn(4, 6)}
    r = api.recommend(out, new_items=new, top_k=84, users=[0], output=tmp_path / "n.tsv")
    assert (r.num_items, r.catalog_items, r.new_items) == (84, 80, 4)
    kinds = [line.split("\t")[4] for line in (tmp_path / "n.tsv").read_text().splitlines()[1:]]
    assert kinds.count("new") == 4
    tok = api.tokenize(out, output=tmp_path / "t.npy")
    assert tok.paths == [tmp_path / "t.npy"] and tok.num_items == 80
    assert sorted(tok.codes) == ["image", "text"] and all(c.shape == (80, 2) for c in tok.codes.values())


@pytest.mark.parametrize("call, argument, text", [
    (lambda out: api.recommend(out, top_k=0), "top_k", "top_k must be >= 1, got 0"),
    (lambda out: api.recommend(out, users=[1, 999]), "users", "users: id(s) [999] outside the run's users 0..59"),
    (lambda out: api.recommend(out, users=[]), "users", "users names no user"),
    (lambda out: api.recommend(out, output="r.csv"), "output", "output must end in .tsv"),
    (lambda out: api.recommend(out, model="lightgcn", new_items={"image": torch.ones(1, 12)}), "new_items",
     "new_items needs model motorec"),
    (lambda out: api.tokenize(out, output="t.csv"), "output", "output must end in .tsv or .npy"),
], ids=["top_k", "users", "no-users", "output", "new-items-model", "tokenize-output"])
def test_use_of_a_run_refuses_bad_arguments_by_name(trained, call, argument, text):
    out, _ = trained
    with pytest.raises(ArgumentError) as e:
        call(out)
    assert e.value.argument == argument and text in str(e.value)


def test_argument_errors_name_the_argument_and_render_as_flags(tmp_path):
    with pytest.raises(ArgumentError, match="threads must be >= 1") as e:
        api.train_models(["lightgcn"], data=SPEC, out=tmp_path / "o", threads=0)
    assert e.value.render(lambda n: "--" + n) == "--threads must be >= 1, got 0"
    with pytest.raises(ArgumentError, match="resume needs out"):
        api.train_models(["lightgcn"], data=SPEC, resume=True)
    with pytest.raises(ArgumentError, match="unknown model"):
        api.train_models(["nope"], data=SPEC, out=tmp_path / "o")
    with pytest.raises(ArgumentError) as e:
        api.resolve_data(tmp_path / "missing")
    assert e.value.argument == "data" and "is not a directory" in str(e.value)
    assert not (tmp_path / "o").exists()  # nothing was written for a refused call


def test_run_compare_refuses_bad_arguments_before_any_run(tmp_path, monkeypatch):
    monkeypatch.setattr(compare.subprocess, "run", lambda *a, **k: pytest.fail("no run may start"))
    for kwargs, argument in (({"draws": 0}, "draws"), ({"jobs": True}, "jobs"), ({"epochs": -1}, "epochs"),
                             ({"models": []}, "models"), ({"models": ["nope"]}, "models"),
                             ({"data": str(tmp_path / "missing")}, "data"), ({"grid_lr": [1e-3]}, "grid_lr")):
        with pytest.raises(ArgumentError) as e:
            api.run_compare(tmp_path / "o", progress=False, **kwargs)
        assert e.value.argument == argument, kwargs
    with pytest.raises(ArgumentError, match="tune_reference, grid_reg only apply with tune"):
        api.run_compare(tmp_path / "o", tune_reference=True, grid_reg=[0.0], progress=False)


def test_build_config_overrides():
    cfg = api.build_config(Config.from_dict(TINY), epochs=5, seed=3, split="warm", split_seed=2, device="cpu")
    assert (cfg.train.epochs, cfg.train.seed, cfg.data.split, cfg.data.seed) == (5, 3, "warm", 2)
    assert cfg.train.pretrain_epochs == 1 and cfg.model.dim == 16  # the rest is the given config's
    assert api.build_config().train.epochs == Config().train.epochs
    with pytest.raises(ArgumentError, match="config must be a Config"):
        api.build_config(3)


def test_settings_read_by_a_model_leave_other_models_sections_out():
    d = Config.from_dict(TINY).to_dict()
    lg = compare._settings_read_by(d, "lightgcn")
    assert "motorec" not in lg and {"model", "wrappers", "train", "data"} <= set(lg)
    assert compare._settings_read_by(d, "motorec")["motorec"] == d["motorec"]


def test_worker_trains_one_compare_run(tmp_path, capsys):
    """The process compare starts per run, called in this process: flags to train_models, exit codes."""
    out = tmp_path / "w"
    assert worker.main(["--out", str(out), "--model", "lightgcn", "--split-seed", "2", "--seed", "1",
                        "--data", SPEC, "--epochs", "1", "--threads", "1", "--quiet"]) == 0
    assert "lightgcn" in capsys.readouterr().out
    info = json.loads((out / "run.json").read_text())
    assert info["data_seed"] == 2 and Config.load(out / "config.yaml").train.seed == 1
    assert json.loads((out / "metrics.json").read_text())["lightgcn"]["epochs_run"] == 1
    assert worker.main(["--out", str(tmp_path / "x"), "--model", "lightgcn", "--split-seed", "0", "--seed", "0",
                        "--data", "synthetic:size=3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("motorec: error:")
