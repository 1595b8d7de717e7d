"""The configuration of every model: a shared ``model:`` section, one section per model with its own dataclass
beside the model, a ``wrappers:`` section; YAML round trip; unknown, misplaced and deleted keys refused with the
key and the model named; no config dataclass over 30 fields."""
from __future__ import annotations

import dataclasses

import pytest

from motorec.config import (
    MODEL_NAMES,
    Config,
    ConfigError,
    DataConfig,
    ModelConfig,
    TrainConfig,
    WrapperConfig,
    model_config,
    model_names,
)
from motorec.models import MODELS, build_model

OWN_KEYS = {
    "motorec": {"latent_dim", "hidden_dims", "num_levels", "codebook_size", "commitment", "sparse_weight",
                "sparse_temperature", "continuous", "ema", "kmeans_init", "token_embeddings", "lambda_rq",
                "tokenizer_sample", "rarity", "rarity_clip", "rarity_warmup_epochs", "rarity_terms", "item_item",
                "fusion", "knn_k", "knn_rebuild_every", "lambda_cl", "tau", "cl_items", "lambda_cold"},
    "lightgcn": set(),
    "content": {"hidden"},
    "lightgcn_content": {"hidden"},
    "knn": {"cold_k"},
    "aldi": {"alpha", "beta", "gamma", "supervised", "tws", "tws_m", "hidden"},
    "aldi_published": {"alpha", "beta", "gamma", "supervised", "tws", "tws_m", "hidden", "teacher_epochs", "selection"},
    "dropoutnet": {"dropout", "hidden"},
    "heater": {"experts", "alpha", "dropout", "hidden"},
    "clcrec": {"temperature", "lr_lambda", "num_sample", "hidden"},
    "gar": {"alpha", "beta", "hidden"},
}
SHARED = {"name", "dim", "num_layers", "lambda_reg", "cold_calibration"}
# switches whose measurements rejected them, and compatibility shims: deleted, so refused as unknown keys
DELETED = ("freeze_tokenizer", "cold_distill", "cl_target", "cold_dropout", "id_dropout", "warm_content_skip",
           "feature_residual", "warm_content_layer0", "rarity_gate", "rarity_contrastive", "item_item_ids",
           "sparse_mode", "cold_calibration_scope", "cold_score_shift", "warm_scorer", "cold_ensemble",
           "rarity_min", "rarity_max", "content_hidden", "knn_cold_k", "aldi_alpha", "aldi_tws")


def test_a_section_per_model_with_its_own_keys_and_defaults():
    assert model_names() == MODEL_NAMES == tuple(MODELS)
    d = Config().to_dict()
    assert list(d) == ["model", *MODEL_NAMES, "wrappers", "train", "data"]
    assert set(d["model"]) == SHARED
    for name, (_, cls) in MODELS.items():
        assert set(d[name]) == OWN_KEYS[name], name
        cfg = model_config(name)
        assert type(cfg) is cls and cfg.name == name and cfg.dim == 64 and cfg.cold_calibration is None
        assert dataclasses.asdict(cfg) == dataclasses.asdict(Config().settings(name))
    assert model_config("knn").cold_k == 10 and model_config("content").hidden == 256
    assert model_config("aldi").alpha == 0.9 and model_config("motorec").rarity_clip == (0.5, 5.0)
    assert Config().wrappers == WrapperConfig() == WrapperConfig(ensemble=20, decoupled=True)


def test_settings_merge_the_shared_section_with_the_models_own():
    cfg = Config.from_dict({"model": {"name": "content", "dim": 8, "cold_calibration": 0.5},
                            "content": {"hidden": 12}, "lightgcn_content": {"hidden": 20}})
    s = cfg.settings()
    assert (s.name, s.dim, s.hidden, s.cold_calibration) == ("content", 8, 12, 0.5)
    other = cfg.settings("lightgcn_content")
    assert (other.name, other.dim, other.hidden) == ("lightgcn_content", 8, 20)
    assert cfg.settings("motorec").dim == 8  # the shared keys reach every model
    with pytest.raises(ConfigError, match="model.name must be one of"):
        cfg.settings("nope")


def test_yaml_round_trip_and_fingerprint(tmp_path):
    cfg = Config().replace(model={"name": "aldi", "dim": 32}, motorec={"hidden_dims": [8, 4], "lambda_cl": 0.5},
                           aldi={"tws": True}, knn={"cold_k": 3}, wrappers={"ensemble": 4, "decoupled": True},
                           train={"epochs": 3})
    p = tmp_path / "c.yaml"
    cfg.save(p)
    back = Config.load(p)
    assert back == cfg and back.sections["motorec"].hidden_dims == (8, 4)
    assert back.settings("knn").cold_k == 3 and back.wrappers.ensemble == 4 and back.wrappers.decoupled is True
    assert back.fingerprint() == cfg.fingerprint()
    assert cfg.replace(train={"epochs": 9}).fingerprint() == cfg.fingerprint()  # epoch budget not part of it
    assert cfg.replace(motorec={"lambda_cl": 0.2}).fingerprint() != cfg.fingerprint()
    assert cfg.replace(wrappers={"ensemble": 2}).fingerprint() != cfg.fingerprint()
    assert cfg.replace(motorec={"tau": 0.3}).differences(cfg) == ["motorec.tau: 0.2 -> 0.3"]
    p.write_text("motorec: {lambda_cl: 1e-3}\n")  # YAML 1.1 reads 1e-3 as a string
    assert Config.load(p).settings("motorec").lambda_cl == 1e-3
    p.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="YAML"):
        Config.load(p)
    with pytest.raises(ConfigError, match="does not exist"):
        Config.load(tmp_path / "missing.yaml")


@pytest.mark.parametrize("bad,match", [
    ({"model": {"codebook_size": 8}}, r"model.codebook_size is not a shared model key; it is a setting of motorec"),
    ({"model": {"hidden": 8}}, r"model.hidden is not a shared model key; it is a setting of content, "
                               r"lightgcn_content, aldi, aldi_published, dropoutnet, heater, clcrec, gar: put it under content:"),
    ({"content": {"codebook_size": 8}}, r"unknown key content.codebook_size for model 'content'; it is a setting "
                                        r"of motorec \(section motorec:\); content's own keys: hidden"),
    ({"lightgcn": {"hidden": 8}}, r"unknown key lightgcn.hidden for model 'lightgcn'.*own keys: \(none\)"),
    ({"knn": {"dim": 8}}, r"knn.dim is a shared model key: put it under model:"),
    ({"motorec": {"nope": 1}}, r"unknown key motorec.nope for model 'motorec'"),
    ({"model": {"nope": 1}}, r"model.nope is not a shared model key"),
    ({"extra": {}}, r"unknown config section\(s\) \['extra'\]"),
    ({"wrappers": {"warm_scorer": "id"}}, r"unknown key\(s\) in wrappers: \['warm_scorer'\]"),
    ({"motorec": [1]}, "must be a mapping"),
])
def test_unknown_and_misplaced_keys_are_refused_naming_key_and_model(bad, match):
    with pytest.raises(ConfigError, match=match):
        Config.from_dict(bad)


@pytest.mark.parametrize("key", DELETED)
def test_deleted_switches_are_unknown_keys(key):
    with pytest.raises(ConfigError, match=rf"unknown key motorec\.{key} for model 'motorec'"):
        Config.from_dict({"motorec": {key: 1}})
    with pytest.raises(ConfigError, match=key):
        model_config("motorec", **{key: 1})


def test_model_config_names_key_and_model():
    assert model_config("motorec", dim=8, codebook_size=4).codebook_size == 4
    with pytest.raises(ConfigError, match=r"unknown key cold_k for model 'lightgcn'; it is a setting of knn"):
        model_config("lightgcn", cold_k=3)
    with pytest.raises(ConfigError, match=r"unknown key tau for model 'aldi'; it is a setting of motorec"):
        model_config("aldi", tau=0.1)
    with pytest.raises(ConfigError, match="model.name must be one of"):
        model_config("nope")


@pytest.mark.parametrize("name,key,value", [
    ("motorec", "tau", 0), ("motorec", "rarity", "yes"), ("motorec", "rarity_clip", [2.0, 5.0]),
    ("motorec", "rarity_clip", [0.5]), ("motorec", "rarity_terms", "warm"), ("motorec", "fusion", "max"),
    ("motorec", "lambda_cold", -1.0), ("motorec", "lambda_cold", float("nan")), ("motorec", "codebook_size", 0),
    ("motorec", "hidden_dims", [0]), ("motorec", "tokenizer_sample", -1), ("content", "hidden", 0),
    ("lightgcn_content", "hidden", 1.5), ("knn", "cold_k", 0), ("knn", "cold_k", True), ("knn", "cold_k", "3"),
    ("aldi", "alpha", -0.1), ("aldi", "tws_m", 0), ("aldi", "tws", 1), ("aldi", "hidden", 0),
])
def test_bad_values_are_refused_naming_model_and_key(name, key, value):
    with pytest.raises(ConfigError, match=rf"{name}\.{key} must be"):
        Config.from_dict({name: {key: value}})


def test_shared_and_other_sections_validated():
    for bad, match in (({"model": {"name": "x"}}, "model.name"), ({"model": {"dim": 0}}, "model.dim"),
                       ({"model": {"cold_calibration": 1.5}}, "model.cold_calibration"),
                       ({"wrappers": {"ensemble": 0}}, "wrappers.ensemble"),
                       ({"wrappers": {"decoupled": "yes"}}, "wrappers.decoupled"),
                       ({"train": {"epochs": -1}}, "train.epochs"), ({"train": {"lr": "x"}}, "lr"),
                       ({"train": {"select_group": "warm"}}, "select_group"), ({"data": {"split": "hot"}}, "split")):
        with pytest.raises(ConfigError, match=match):
            Config.from_dict(bad)
    with pytest.raises(ConfigError, match="is not the config of model 'motorec'"):
        dataclasses.replace(model_config("knn"), name="motorec").validate()


def test_build_model_refuses_another_models_config(ds):
    with pytest.raises(ConfigError, match=r"model 'motorec' is configured by a MoToRecConfig, got a ModelConfig"):
        build_model(ds, ModelConfig(name="motorec"))
    with pytest.raises(ValueError, match="unknown model"):
        build_model(ds, dataclasses.replace(ModelConfig(), name="nope"))


def test_baseline_settings_do_not_depend_on_other_models_sections(ds):
    """Changing MoToRec's section leaves every baseline's settings and built model as they were (a comparison
    reuses a baseline's tuning across MoToRec's changes)."""
    changed = Config().replace(motorec={"codebook_size": 7, "rarity": False, "item_item": False, "lambda_cl": 0.7,
                                        "continuous": True, "fusion": "attention"}, model={"dim": 8})
    base = Config().replace(model={"dim": 8})
    for name in MODEL_NAMES:
        if name != "motorec":
            assert changed.settings(name) == base.settings(name), name


def test_no_config_dataclass_has_more_than_30_fields():
    classes = {ModelConfig, TrainConfig, DataConfig, WrapperConfig, Config, *(c for _, c in MODELS.values())}
    for cls in classes:
        assert len(dataclasses.fields(cls)) <= 30, cls.__name__


def test_a_fresh_interpreter_reads_model_sections_without_importing_the_models():
    """``import motorec`` registers every model's section, so a config file loads whatever the caller imported."""
    import subprocess
    import sys

    code = ("from motorec.config import Config; c = Config.from_dict({'motorec': {'codebook_size': 8}, "
            "'knn': {'cold_k': 3}}); print(c.settings().codebook_size, c.settings('knn').cold_k)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["8", "3"]
