"""Experiment configuration: dataclasses with YAML load/save and validation at the boundary.

A :class:`Config` has these sections, each a dataclass:

* ``model`` (:class:`ModelConfig`): which model, and the keys every model reads (``dim``, ``num_layers``,
  ``lambda_reg``, ``cold_calibration``);
* one section per model with its own hyper-parameters, named after it (``motorec``, ``content``, ``knn``, ...;
  each a :class:`ModelConfig` subclass beside its model, registered with :func:`register_model_config`);
* ``wrappers`` (:class:`WrapperConfig`): the generic cold-start machinery every model can take;
* ``train`` (:class:`TrainConfig`) and ``data`` (:class:`DataConfig`).

YAML files use the same nesting::

    model: {name: motorec, dim: 64}
    motorec: {codebook_size: 256, lambda_cl: 0.05}
    wrappers: {ensemble: 20, decoupled: true}
    train: {epochs: 200, lr: 0.001}
    data: {split: cold}

Unknown keys, keys in another model's section, wrong types and out-of-range values raise :class:`ConfigError`
naming the key (and the model).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Type

MODEL_NAMES = ("motorec", "lightgcn", "content", "lightgcn_content", "knn", "aldi", "aldi_published", "dropoutnet",
               "heater", "clcrec", "gar")
__all__ = ["MODEL_NAMES", "Config", "ModelConfig", "TrainConfig", "DataConfig", "WrapperConfig", "ConfigError", "DEFAULT_MODELS",
           "SELECT_RULES", "model_names", "model_config", "register_model_config"]

# what `motorec train` trains without --model (the cold-start baselines knn/aldi are asked for by name)
DEFAULT_MODELS = ("motorec", "lightgcn", "content", "lightgcn_content")
# train settings that change how long or where a run goes, not what its checkpoint means: resuming with
# other values is allowed (Config.fingerprint / Config.differences leave them out)
RUN_ONLY_TRAIN_KEYS = ("epochs", "patience", "device", "backend", "eval_batch_size")
# train.select: the checkpoint-selection rules (TrainConfig.select; the first is the default)
SELECT_RULES = ("warm_cold_mean", "warm", "cold", "hybrid")
# top-level sections that are not a model's own (every other top-level key names a model)
_FIXED_SECTIONS = ("model", "wrappers", "train", "data")


class ConfigError(ValueError):
    """A configuration value or file is invalid (a user error: the CLI exits with code 2)."""


@dataclass
class ModelConfig:
    """The ``model:`` section: which model, and what every model reads.

    A model's own hyper-parameters live in a subclass beside the model (``MoToRecConfig`` in
    ``motorec/models/motorec.py``, ...), registered with :func:`register_model_config` under the model's name,
    which is also the name of its config section. :func:`model_config` builds one; :meth:`Config.settings`
    gives the one a run trains.
    """

    name: str = "motorec"
    dim: int = 64
    num_layers: int = 2
    lambda_reg: float = 1e-4
    # cold-item scores mapped onto the warm items' score distribution (0: off, 1: full), for every model that
    # scores cold items from features; null: the model's own default (1 for motorec, 0 for the baselines)
    cold_calibration: Optional[float] = None

    def validate(self) -> None:
        if self.name not in _MODEL_CONFIGS:
            raise ConfigError(f"model.name must be one of {', '.join(model_names())}, got {self.name!r}")
        expected = _MODEL_CONFIGS[self.name]
        if type(self) is not ModelConfig and type(self) is not expected:
            raise ConfigError(f"a {type(self).__name__} is not the config of model {self.name!r} "
                              f"(that is {expected.__name__})")
        _positive_int(self, "dim")
        _nonneg_int(self, "num_layers")
        _nonneg_float(self, "lambda_reg")
        if self.cold_calibration is not None:
            if not 0.0 <= _float(self, "cold_calibration") <= 1.0:
                raise ConfigError(f"model.cold_calibration must lie in [0, 1] or be null (the model's default), "
                                  f"got {self.cold_calibration}")
            self.cold_calibration = float(self.cold_calibration)
        self.check()

    def check(self) -> None:
        """The model's own checks (a subclass overrides it; errors name ``<model>.<key>``)."""


_SHARED = tuple(f.name for f in fields(ModelConfig))
_MODEL_CONFIGS: Dict[str, Type[ModelConfig]] = {}


def register_model_config(name: str, cls: Type[ModelConfig]) -> None:
    """Make ``cls`` (a :class:`ModelConfig` subclass whose own fields are model ``name``'s hyper-parameters, or
    :class:`ModelConfig` itself for a model with none) the config of model ``name`` and of section ``name:``."""
    if not (isinstance(cls, type) and issubclass(cls, ModelConfig)):
        raise TypeError(f"a model config must be a ModelConfig subclass, got {cls!r}")
    if name in _FIXED_SECTIONS:
        raise ValueError(f"{name!r} is a config section of its own, not a model name")
    clash = set(own_fields(cls)) & set(_SHARED)
    if clash:
        raise ValueError(f"{cls.__name__} redefines shared model keys {sorted(clash)}")
    _MODEL_CONFIGS[name] = cls


def model_names() -> Tuple[str, ...]:
    """Every registered model name (``motorec.models`` registers them when ``motorec`` is imported)."""
    return tuple(_MODEL_CONFIGS)


def own_fields(cls) -> Tuple[str, ...]:
    """The fields of a model config class beyond the shared ``model:`` section."""
    return tuple(f.name for f in fields(cls) if f.name not in _SHARED)


def model_config(name: str, **values: Any) -> ModelConfig:
    """The validated config of model ``name``: shared keys and its own keys in one call, e.g.
    ``model_config("motorec", dim=32, codebook_size=64)``. A key the model does not read raises
    :class:`ConfigError` naming the key and the model."""
    if name not in _MODEL_CONFIGS:
        raise ConfigError(f"model.name must be one of {', '.join(model_names())}, got {name!r}")
    cls = _MODEL_CONFIGS[name]
    _check_keys(values, cls, name, section=None)
    cfg = _section(cls, {**values, "name": name}, name)
    cfg.validate()
    return cfg


def _check_keys(values: Dict[str, Any], cls, model: str, section: Optional[str]) -> None:
    """Refuse keys ``model`` does not read, naming the section (``None``: shared and own keys together) and
    where the key belongs when another model or section reads it."""
    allowed = set(own_fields(cls)) | (set(_SHARED) if section is None else set())
    bad = sorted(set(values) - allowed)
    if not bad:
        return
    k = bad[0]
    where = f"{section}.{k}" if section else k
    if section is not None and k in _SHARED:
        raise ConfigError(f"{where} is a shared model key: put it under model: (read by every model)")
    owners = [n for n, c in _MODEL_CONFIGS.items() if k in own_fields(c)]
    hint = f"; it is a setting of {', '.join(owners)} (section {owners[0]}:)" if owners else ""
    raise ConfigError(f"unknown key {where} for model {model!r}{hint}; {model}'s own keys: "
                      f"{', '.join(own_fields(cls)) or '(none)'}")


@dataclass
class WrapperConfig:
    """The ``wrappers:`` section: generic cold-start machinery, the same for every model that can take it
    (``motorec.models.wrap``)."""

    # snapshot ensemble: cold items scored by the mean of standardized scores under the model's weights at the
    # ends of its last `ensemble` epochs (1: off)
    ensemble: int = 20
    # warm items scored by a pure-ID LightGCN trained in the same step, cold items by the model; each part
    # selected at its own best epoch (feature models only)
    decoupled: bool = True

    def validate(self) -> None:
        _positive_int(self, "ensemble")
        if not isinstance(self.decoupled, bool):
            raise ConfigError(f"wrappers.decoupled must be true or false, got {self.decoupled!r}")


# train.precision: the dtype the training steps' forward runs its matmuls in (torch.autocast)
PRECISIONS = ("fp32", "bf16")
PROPAGATIONS = ("full", "history")


@dataclass
class TrainConfig:
    """Optimization, schedule, early stopping and evaluation settings."""

    # a cap, not a schedule: early stopping (``patience``) ends training. 500 leaves every model of the
    # bundled MovieLens-100k room to converge (LightGCN's validation recall peaks at epoch 164-212 at lr 1e-3,
    # docs/MODEL.md). The trainer warns when the cap ends a run.
    epochs: int = 500
    pretrain_epochs: int = 20
    batch_size: int = 2048
    lr: float = 1e-3
    weight_decay: float = 0.0
    patience: int = 20
    # the checkpoint-selection rule (early stopping and the restored weights), fixed in advance and the same for
    # every model: "warm_cold_mean" = the mean of validation Recall@20 in the warm setting (cold items masked)
    # and the cold setting (warm items masked), so a content model is selected for its cold path as well as its
    # warm one; "warm", "cold" or "hybrid" = that setting's validation Recall@20 alone. A setting without
    # validation users (cold on a warm split) is left out of the mean.
    select: str = "warm_cold_mean"
    eval_every: int = 1
    eval_batch_size: int = 1024
    # validation during training ranks a fixed sample of this many validation users (drawn once per run from
    # ``seed``; the log row carries the sample's standard error of select_score); 0 = every user. The final
    # valid and test reports rank every user. A sample bounds validation's cost on a large catalog.
    eval_users: int = 0
    seed: int = 0
    device: str = "cpu"
    backend: str = "auto"
    # "bf16": the training steps' forward under torch.autocast(bfloat16) (matmuls in bfloat16, the parameters,
    # gradients, optimizer and every ranking in float32; the quantizer's distances stay float32); "fp32": none
    precision: str = "fp32"
    # how a training step propagates over the graphs: "full" (the whole graph every step) or "history" (the
    # batch's neighbourhoods, the rest from historical embeddings refreshed once per epoch: a step costs the
    # batch, not the catalog; lightgcn, lightgcn_content and motorec take it, docs/MODEL.md "History steps")
    propagation: str = "full"
    # a history step's neighbours per node at most, sampled and reweighted (0: all of them; needs history)
    fanout: int = 0

    def validate(self) -> None:
        for k in ("epochs", "pretrain_epochs", "patience", "seed", "eval_users", "fanout"):
            _nonneg_int(self, k)
        for k in ("batch_size", "eval_every", "eval_batch_size"):
            _positive_int(self, k)
        if _float(self, "lr") <= 0:
            raise ConfigError(f"train.lr must be > 0, got {self.lr}")
        _nonneg_float(self, "weight_decay")
        if self.select not in SELECT_RULES:
            raise ConfigError(f"train.select must be one of {', '.join(SELECT_RULES)}, got {self.select!r}")
        if self.backend not in ("auto", "torch", "cpu", "cuda", "triton"):
            raise ConfigError(f"train.backend must be one of auto, torch, cpu, cuda, triton; got {self.backend!r}")
        if not isinstance(self.device, str) or not self.device:
            raise ConfigError(f"train.device must be a device string such as 'cpu' or 'cuda', got {self.device!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"train.precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.propagation not in PROPAGATIONS:
            raise ConfigError(f"train.propagation must be one of {', '.join(PROPAGATIONS)}, got {self.propagation!r}")
        if self.fanout and self.propagation != "history":
            raise ConfigError(f"train.fanout caps a history step's neighbours: it needs train.propagation: history, "
                              f"got {self.propagation!r}")


@dataclass
class DataConfig:
    """How the dataset is split (the data itself is named on the command line)."""

    split: str = "cold"
    seed: int = 0

    def validate(self) -> None:
        if self.split not in ("cold", "warm"):
            raise ConfigError(f"data.split must be 'cold' or 'warm', got {self.split!r}")
        _nonneg_int(self, "seed")


def _default_sections() -> Dict[str, ModelConfig]:
    return {name: cls(name=name) for name, cls in _MODEL_CONFIGS.items()}


@dataclass
class Config:
    """The whole experiment configuration: ``model`` (shared), each model's own section (``sections[name]``,
    written as a top-level ``<name>:`` section), ``wrappers``, ``train`` and ``data``."""

    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    wrappers: WrapperConfig = field(default_factory=WrapperConfig)
    sections: Dict[str, ModelConfig] = field(default_factory=_default_sections)

    def validate(self) -> "Config":
        self.model.validate()
        for name, sec in self.sections.items():
            if name not in _MODEL_CONFIGS or type(sec) is not _MODEL_CONFIGS[name]:
                raise ConfigError(f"section {name!r} must hold a {_MODEL_CONFIGS.get(name, ModelConfig).__name__}")
            self.settings(name)
        self.wrappers.validate()
        self.train.validate()
        self.data.validate()
        return self

    def settings(self, name: Optional[str] = None) -> ModelConfig:
        """The config model ``name`` (default ``model.name``) is built from: the shared ``model:`` keys and its
        own section's keys, validated."""
        name = self.model.name if name is None else name
        if name not in _MODEL_CONFIGS:
            raise ConfigError(f"model.name must be one of {', '.join(model_names())}, got {name!r}")
        own = self.sections.get(name) or _MODEL_CONFIGS[name](name=name)
        shared = {k: getattr(self.model, k) for k in _SHARED}
        cfg = dataclasses.replace(own, **{**shared, "name": name})
        cfg.validate()
        return cfg

    # ------------------------------------------------------------------ (de)serialization
    def to_dict(self) -> Dict[str, Dict[str, Any]]:
        d: Dict[str, Dict[str, Any]] = {"model": dataclasses.asdict(self.model)}
        for name, sec in self.sections.items():
            d[name] = {k: (list(v) if isinstance(v, tuple) else v)
                       for k, v in dataclasses.asdict(sec).items() if k not in _SHARED}
        d["wrappers"] = dataclasses.asdict(self.wrappers)
        d["train"] = dataclasses.asdict(self.train)
        d["data"] = dataclasses.asdict(self.data)
        return d

    @classmethod
    def from_dict(cls, d: Optional[Dict[str, Any]]) -> "Config":
        """Build and validate a config from nested dicts; missing keys keep their defaults. Sections: ``model``,
        one per model name, ``wrappers``, ``train``, ``data``; an unknown section, or a key in the wrong one,
        raises :class:`ConfigError` naming it."""
        d = {} if d is None else d
        if not isinstance(d, dict):
            raise ConfigError(f"a config must be a mapping with sections {', '.join(_FIXED_SECTIONS)} and one per "
                              f"model, got {type(d).__name__}")
        unknown = sorted(set(d) - set(_FIXED_SECTIONS) - set(_MODEL_CONFIGS))
        if unknown:
            raise ConfigError(f"unknown config section(s) {unknown}; expected {', '.join(_FIXED_SECTIONS)} or a "
                              f"model name ({', '.join(model_names())})")
        shared = d.get("model") or {}
        if not isinstance(shared, dict):
            raise ConfigError(f"config section 'model' must be a mapping, got {type(shared).__name__}")
        misplaced = sorted(set(shared) - set(_SHARED))
        if misplaced:
            k = misplaced[0]
            owners = [n for n, c in _MODEL_CONFIGS.items() if k in own_fields(c)]
            where = f"it is a setting of {', '.join(owners)}: put it under {owners[0]}:" if owners else \
                f"known shared keys: {', '.join(_SHARED)}"
            raise ConfigError(f"model.{k} is not a shared model key; {where}")
        sections = {}
        for name, klass in _MODEL_CONFIGS.items():
            values = d.get(name) or {}
            if not isinstance(values, dict):
                raise ConfigError(f"config section {name!r} must be a mapping, got {type(values).__name__}")
            _check_keys(values, klass, name, section=name)
            sections[name] = _section(klass, {**values, "name": name}, name)
        return cls(model=_section(ModelConfig, shared, "model"), train=_section(TrainConfig, d.get("train") or {}, "train"),
                   data=_section(DataConfig, d.get("data") or {}, "data"),
                   wrappers=_section(WrapperConfig, d.get("wrappers") or {}, "wrappers"), sections=sections).validate()

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_yaml())

    @classmethod
    def load(cls, path: str | Path) -> "Config":
        """Read a YAML config file (raises :class:`ConfigError` for a missing/unparsable/invalid file)."""
        import yaml

        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} does not exist")
        try:
            d = yaml.safe_load(p.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {str(p)!r} is not valid YAML: {str(e).splitlines()[0]}") from None
        return cls.from_dict(d)

    def replace(self, **sections: Dict[str, Any]) -> "Config":
        """A validated copy with some fields changed, e.g. ``cfg.replace(model={"name": "lightgcn"},
        motorec={"codebook_size": 64})``."""
        d = self.to_dict()
        for name, updates in sections.items():
            if name not in d:
                raise ConfigError(f"unknown config section {name!r}")
            d[name].update(updates)
        return Config.from_dict(d)

    def differences(self, other: Dict[str, Any] | "Config",
                    exclude_train: Tuple[str, ...] = RUN_ONLY_TRAIN_KEYS) -> list:
        """``["section.key: theirs -> ours", ...]`` for every setting that enters :meth:`fingerprint` and differs
        from ``other`` (a Config or its ``to_dict()``; a key ``other`` lacks shows as ``<missing>``)."""
        theirs = other.to_dict() if isinstance(other, Config) else other
        out = []
        for sec, ours in self.to_dict().items():
            old = theirs.get(sec, {}) if isinstance(theirs, dict) else {}
            for k, v in ours.items():
                if sec == "train" and k in exclude_train:
                    continue
                o = old.get(k, "<missing>") if isinstance(old, dict) else "<missing>"
                if isinstance(o, tuple):
                    o = list(o)
                if o != v:
                    out.append(f"{sec}.{k}: {o!r} -> {v!r}")
        return out

    def fingerprint(self, *, exclude_train: Tuple[str, ...] = RUN_ONLY_TRAIN_KEYS) -> str:
        """Hash of the settings that change what a checkpoint means (not the epoch budget or device)."""
        d = self.to_dict()
        for k in exclude_train:
            d["train"].pop(k, None)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def _section(klass, values: Dict[str, Any], name: str):
    if not isinstance(values, dict):
        raise ConfigError(f"config section {name!r} must be a mapping, got {type(values).__name__}")
    known = {f.name: f for f in fields(klass)}
    unknown = set(values) - set(known)
    if unknown:
        raise ConfigError(f"unknown key(s) in {name}: {sorted(unknown)}; known keys: {', '.join(known)}")
    out = {}
    for k, v in values.items():
        default = getattr(klass(), k)
        if isinstance(default, tuple) and isinstance(v, list):
            v = tuple(v)
        elif isinstance(default, float) and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        elif isinstance(default, float) and isinstance(v, str):
            try:  # YAML 1.1 reads "1e-3" as a string
                v = float(v)
            except ValueError:
                raise ConfigError(f"{name}.{k} must be a number, got {v!r}") from None
        out[k] = v
    return klass(**out)


def _float(obj, k: str) -> float:
    v = getattr(obj, k)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ConfigError(f"{_sec(obj, k)}.{k} must be a number, got {v!r}")
    return float(v)


def _nonneg_float(obj, k: str) -> None:
    if not 0.0 <= _float(obj, k) < float("inf"):  # also refuses NaN
        raise ConfigError(f"{_sec(obj, k)}.{k} must be a finite number >= 0, got {getattr(obj, k)}")


def _int(obj, k: str) -> int:
    v = getattr(obj, k)
    if isinstance(v, bool) or not isinstance(v, int):
        raise ConfigError(f"{_sec(obj, k)}.{k} must be an integer, got {v!r}")
    return v


def _positive_int(obj, k: str) -> None:
    if _int(obj, k) <= 0:
        raise ConfigError(f"{_sec(obj, k)}.{k} must be > 0, got {getattr(obj, k)}")


def _nonneg_int(obj, k: str) -> None:
    if _int(obj, k) < 0:
        raise ConfigError(f"{_sec(obj, k)}.{k} must be >= 0, got {getattr(obj, k)}")


def _sec(obj, k: Optional[str] = None) -> str:
    if isinstance(obj, ModelConfig):
        return "model" if k is None or k in _SHARED else obj.name
    return {TrainConfig: "train", DataConfig: "data", WrapperConfig: "wrappers"}[type(obj)]
