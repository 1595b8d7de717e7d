"""Experiment configuration: dataclasses with YAML load/save and validation at the boundary.

A :class:`Config` has three sections, each a dataclass: ``model`` (:class:`ModelConfig`: MoToRec and the
baselines share it; baselines ignore the MoToRec-only fields), ``train`` (:class:`TrainConfig`) and ``data``
(:class:`DataConfig`). YAML files use the same nesting::

    model: {name: motorec, dim: 64, lambda_cl: 0.1}
    train: {epochs: 200, lr: 0.001}
    data: {split: cold}

Unknown keys, wrong types and out-of-range values raise :class:`ConfigError` naming the key.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

__all__ = ["Config", "ModelConfig", "TrainConfig", "DataConfig", "ConfigError", "MODEL_NAMES", "DEFAULT_MODELS",
           "SELECT_RULES", "BASELINE_MODEL_KEYS", "MOTOREC_ONLY_MODEL_KEYS"]

MODEL_NAMES = ("motorec", "lightgcn", "content", "lightgcn_content", "knn", "aldi")
# what `motorec train` trains without --model (the cold-start baselines knn/aldi are asked for by name)
DEFAULT_MODELS = ("motorec", "lightgcn", "content", "lightgcn_content")
# train settings that change how long or where a run goes, not what its checkpoint means: resuming with
# other values is allowed (Config.fingerprint / Config.differences leave them out)
RUN_ONLY_TRAIN_KEYS = ("epochs", "patience", "device", "backend", "eval_batch_size")
# train.select: the checkpoint-selection rules (TrainConfig.select; the first is the default)
SELECT_RULES = ("warm_cold_mean", "warm", "cold", "hybrid")
# keys that older versions wrote and that were replaced: {section: {key: what replaced it}}
REPLACED_KEYS = {"train": {"select_group": "train.select (default 'warm_cold_mean': the mean of validation warm "
                                           "and cold Recall@20, the same rule for every model)"}}
# keys added with a default that changed behaviour: a config saved before the key existed (a trained run's, loaded
# to evaluate it) meant this value, not today's default: {section: {key: the behaviour before the key}}
SAVED_BEFORE_KEY = {"model": {"warm_scorer": "joint", "cold_ensemble": 1}}


# the ModelConfig keys some baseline reads (besides ``name``); every other model key is read by MoToRec alone
# (MOTOREC_ONLY_MODEL_KEYS below; tests/models/test_cold_baselines.py checks that changing those leaves every
# baseline exactly as it was). `motorec compare` reuses a baseline's tuning and runs across changes of MoToRec-only keys.
BASELINE_MODEL_KEYS = ("dim", "num_layers", "lambda_reg", "content_hidden", "cold_calibration",
                       "cold_calibration_scope", "cold_score_shift", "knn_cold_k", "aldi_alpha", "aldi_beta",
                       "aldi_gamma", "aldi_supervised", "aldi_tws", "aldi_tws_m")


class ConfigError(ValueError):
    """A configuration value or file is invalid (a user error: the CLI exits with code 2)."""


@dataclass
class ModelConfig:
    """Model hyper-parameters (PAPER.md sections 1-4; defaults are the paper's or ours where it is silent).

    Ablation switches: ``sparse_weight=0`` (no sparsity KL), ``rarity=False`` (all weights 1),
    ``item_item=False`` (no source-level item-item graphs), ``continuous=True`` (skip quantization, use z_e).
    ``warm_content_skip=True`` adds the content view to warm items' final embeddings as well.
    """

    name: str = "motorec"
    dim: int = 64
    num_layers: int = 2
    # tokenizer (section 1)
    latent_dim: int = 64
    hidden_dims: Tuple[int, ...] = (256,)
    num_levels: int = 3
    codebook_size: int = 256
    commitment: float = 0.25
    sparse_weight: float = 1e-3
    sparse_mode: str = "softmax"
    sparse_temperature: float = 1.0
    continuous: bool = False
    ema: bool = False
    kmeans_init: bool = True
    token_embeddings: bool = True
    # rarity amplification (section 2)
    # on by default (a component of the paper's model); on MovieLens-100k's cold split (validation) turning it
    # off gave a little more warm and cold recall, see docs/MODEL.md
    rarity: bool = True
    rarity_min: float = 0.5
    rarity_max: float = 5.0
    rarity_warmup_epochs: int = 5
    rarity_contrastive: bool = False
    rarity_gate: bool = False
    # which BPR terms the rarity weights scale: "content" (only the content-only lambda_cold term, the path that
    # embeds cold items; the main term, which ranks warm items, stays unweighted) or "all" (both terms).
    # "content" because weighting the warm ranking toward rare items cost warm recall (docs/MODEL.md)
    rarity_terms: str = "content"
    # graph encoder (section 3)
    item_item: bool = True
    # how the modality views are fused into the content view h~: "mean" (their plain mean, no parameters) or
    # "attention" (softmax over modalities of q . tanh(W h_m + b), motorec.ops.source_attention). "mean" since
    # 2026-12-01 (was "attention"): on synthetic catalogs whose features carry little signal it lifted validation
    # cold Recall@20 on all six catalog draws (noise 2: 0.439 -> 0.482, noise 3: 0.227 -> 0.286), equal at noise 1;
    # on MovieLens-100k the selection score rose on 6 of 9 draw x seed runs (cold up, warm down 1.5 points)
    # (docs/MODEL.md, "Fusion by mean")
    fusion: str = "mean"
    knn_k: int = 10
    knn_rebuild_every: int = 5
    # the item-item layer also passes the neighbours' ID embeddings (an item's own ID left out)
    item_item_ids: bool = False
    # objectives (section 4)
    lambda_cl: float = 0.05
    tau: float = 0.2
    # the contrastive term uses at most this many of the batch's distinct positive items (a uniform random
    # subset when there are more; exact below): bounds its [n x n] logits. 256 since 2026-11-30 (was 512): a
    # sixth less time per MovieLens-100k step, and the same quality on five runs (docs/MODEL.md, "The training step")
    cl_items: int = 256
    # the collaborative view the contrastive term aligns the content view with: "joint" (the model's own LightGCN
    # readout) or "id" (the ID branch's readout, detached: a pure collaborative target, as in CLCRec / ALDI; needs
    # warm_scorer "id" or "sum")
    cl_target: str = "joint"
    lambda_rq: float = 1.0
    lambda_reg: float = 1e-4
    # joint training: the tokenizer's losses (reconstruction, codebook, commitment, sparsity) and its fresh
    # encoder/quantizer pass run on a uniform sample of this many items per step (an unbiased estimate of the
    # catalog mean); every other item keeps its tokens from the last refresh (each epoch start, plus the
    # sampled rows after each step). 0: the whole catalog every step (slow on large catalogs). 64 since 2026-12-01
    # (was 128): a MovieLens-100k epoch ~12% shorter; test cold recall equal or higher and warm ~1% lower on
    # MovieLens-100k and on synthetic catalogs (docs/MODEL.md, "The sparsity term's custom-op detour, and a
    # 64-item tokenizer sample")
    tokenizer_sample: int = 64
    # joint training with the tokenizer frozen as pre-training left it: every item's latent and tokens are fixed
    # (one pass without gradients per epoch), no tokenizer loss, and no ranking gradient reaches the encoder or
    # the codebooks, so the codes the graph encoder builds on stop changing (code churn 0). false: the tokenizer
    # keeps training in the joint stage (docs/MODEL.md, "The variants issue 17 asked for")
    freeze_tokenizer: bool = False
    # drop an item's ID embedding with this probability in training, so the content path alone must rank
    # (how a cold item is scored at test time); 0 disables it.
    id_dropout: float = 0.0
    # score a positive/negative in BPR by its cold (content-only) embedding with this probability
    cold_dropout: float = 0.0
    # weight of an extra BPR term that scores the batch's positive and negative by their content-only (cold)
    # embeddings, so the content path is trained to rank on its own without taking terms from warm ranking.
    # 1.0 since 2026-12-01 (was 0.2): under the issue-17 protocol, with lr 5e-3 it raised MoToRec's validation
    # selection score on 5 of 6 draw x seed runs and was neutral at lr 1e-3 on MovieLens-100k, but lost cold recall
    # on a weak-feature synthetic catalog at lr 1e-3 (one draw; docs/MODEL.md, "Validation screen", to recheck)
    lambda_cold: float = 1.0
    # weight of ALDI's alignment terms (aldi_gamma * rating distribution + aldi_alpha * ranking + aldi_beta *
    # identification; motorec.models.aldi.aldi_distill_losses) that teach the content-only (cold) embeddings of
    # the batch's positive and negative to score as the model's own final warm embeddings do (the teacher,
    # detached); 0: off. motorec only (docs/MODEL.md, "The variants issue 17 asked for")
    cold_distill: float = 0.0
    # at scoring, move cold-item scores toward the mean/spread of warm-item scores (0: off, 1: full), for every
    # model that scores cold items from features (motorec, lightgcn_content, content, knn, aldi: ColdScorer).
    # null: the model's own default, 1.0 for motorec (tuned with it, docs/MODEL.md) and 0.0 (off) for the
    # baselines (as published); a number applies to every model, e.g. in one `motorec compare --config`
    cold_calibration: Optional[float] = None
    # where the means/spreads come from: "global" (all users x items: one affine map for every cold score) or
    # "user" (each user's own scores)
    cold_calibration_scope: str = "global"
    # then lower cold-item scores by this many standard deviations of the warm-item scores (0: off)
    cold_score_shift: float = 0.0
    # add the content view h~ to a warm item's final embedding as well (cold items always get it: their
    # readout alone is h~ / (L + 1)); false: a warm item's final embedding is its LightGCN readout
    warm_content_skip: bool = False
    # add the content view h~ to a warm item's layer 0 (ID + h~); false: a warm item's layer 0 is its ID embedding
    # alone and only cold items start from h~, so the collaborative level of warm items is plain LightGCN and the
    # content path is trained by the content-only and contrastive terms (a decoupled variant). On: with it off,
    # validation rose at lr 5e-3 and fell at lr 1e-3 on MovieLens-100k (docs/MODEL.md, "Warm items without content
    # at layer 0")
    warm_content_layer0: bool = True
    # what scores warm items: "id" (a pure-ID LightGCN branch trained beside the model in the same step, with its
    # own user and item ID tables and its own BPR term, sharing nothing with the content path: warm items are
    # ranked as by LightGCN, cold items by the content path, as in the decoupled cold-start models; the trainer
    # then selects the two parts' epochs apart), "joint" (the model's own final embeddings, content in them: the
    # default until 2026-12-01) or "sum" (both scores added). With "id" / "sum" the ID tables are 2 * dim wide:
    # columns [:dim] the joint model's, [dim:] the branch's (one propagation for both). docs/MODEL.md, "Warm items
    # scored by a pure-ID branch"
    warm_scorer: str = "id"
    # the joint model's scores (every cold item's, and with warm_scorer "joint" / "sum" warm items' too) are the
    # mean of its standardized scores under its weights at the end of the current epoch and of the
    # cold_ensemble - 1 epochs before (a snapshot ensemble; the earlier weights travel in the model's state). 1:
    # the current weights alone (before 2026-12-01). Code churn makes the content path's cold ranking jump from
    # one epoch to the next; averaging over epochs raised validation cold Recall@20 on every MovieLens-100k and
    # synthetic run measured, where averaging the weights themselves (EMA) lowered it (docs/MODEL.md, "Cold
    # scores averaged over epochs"). Memory: cold_ensemble - 1 copies of the weights the scores need
    cold_ensemble: int = 20
    # the token level also adds an MLP of the raw (L2-normalized) features:
    # h_i^m = W_m z_q^m + sum_k E_m[code_k] + MLP_m(f_m); false: codes alone (the paper's token level)
    feature_residual: bool = False
    # content baselines: MLP hidden width (also the aldi student's)
    content_hidden: int = 256
    # knn baseline: a cold item's embedding is the mean of its knn_cold_k nearest warm items' (docs/BASELINES.md)
    knn_cold_k: int = 10
    # aldi baseline (docs/BASELINES.md; defaults are the ALDI authors'): weights of the student's ranking,
    # identification, rating-distribution and supervised BPR terms, and teacher-aware weighting with its cap M
    aldi_alpha: float = 0.9
    aldi_beta: float = 0.05
    aldi_gamma: float = 0.1
    aldi_supervised: float = 1.0
    aldi_tws: bool = False
    aldi_tws_m: float = 4.0

    def validate(self) -> None:
        if self.name not in MODEL_NAMES:
            raise ConfigError(f"model.name must be one of {', '.join(MODEL_NAMES)}, got {self.name!r}")
        for k in ("dim", "latent_dim", "num_levels", "codebook_size", "knn_k", "knn_rebuild_every", "content_hidden",
                  "knn_cold_k", "cl_items", "cold_ensemble"):
            _positive_int(self, k)
        for k in ("num_layers", "rarity_warmup_epochs", "tokenizer_sample"):
            _nonneg_int(self, k)
        for k in ("commitment", "sparse_weight", "lambda_cl", "lambda_rq", "lambda_reg", "lambda_cold",
                  "cold_distill", "cold_score_shift", "aldi_alpha", "aldi_beta", "aldi_gamma", "aldi_supervised"):
            _nonneg_float(self, k)
        for k in ("tau", "sparse_temperature", "aldi_tws_m"):
            if _float(self, k) <= 0:
                raise ConfigError(f"model.{k} must be > 0, got {getattr(self, k)}")
        for k in ("id_dropout", "cold_dropout"):
            if not 0.0 <= _float(self, k) < 1.0:
                raise ConfigError(f"model.{k} must lie in [0, 1), got {getattr(self, k)}")
        if self.cold_calibration is not None:
            if not 0.0 <= _float(self, "cold_calibration") <= 1.0:
                raise ConfigError(f"model.cold_calibration must lie in [0, 1] or be null (the model's default), "
                                  f"got {self.cold_calibration}")
            self.cold_calibration = float(self.cold_calibration)
        if not 0 < _float(self, "rarity_min") <= 1.0 <= _float(self, "rarity_max"):
            raise ConfigError(f"model.rarity_min/rarity_max must satisfy 0 < min <= 1 <= max, got "
                              f"{self.rarity_min}/{self.rarity_max}")
        if self.rarity_terms not in ("all", "content"):
            raise ConfigError(f"model.rarity_terms must be 'all' or 'content', got {self.rarity_terms!r}")
        if self.cold_calibration_scope not in ("global", "user"):
            raise ConfigError(f"model.cold_calibration_scope must be 'global' or 'user', got "
                              f"{self.cold_calibration_scope!r}")
        if self.warm_scorer not in ("joint", "id", "sum"):
            raise ConfigError(f"model.warm_scorer must be 'joint', 'id' or 'sum', got {self.warm_scorer!r}")
        if self.cl_target not in ("joint", "id"):
            raise ConfigError(f"model.cl_target must be 'joint' or 'id', got {self.cl_target!r}")
        if self.cl_target == "id" and self.warm_scorer == "joint":
            raise ConfigError("model.cl_target 'id' aligns with the ID branch, which needs model.warm_scorer 'id' or "
                              "'sum' (got 'joint')")
        if self.fusion not in ("attention", "mean"):
            raise ConfigError(f"model.fusion must be 'attention' or 'mean', got {self.fusion!r}")
        if self.sparse_mode not in ("softmax", "sigmoid"):
            raise ConfigError(f"model.sparse_mode must be 'softmax' or 'sigmoid', got {self.sparse_mode!r}")
        if not isinstance(self.hidden_dims, (tuple, list)) or not all(
                isinstance(h, int) and not isinstance(h, bool) and h > 0 for h in self.hidden_dims):
            raise ConfigError(f"model.hidden_dims must be a list of positive ints, got {self.hidden_dims!r}")
        self.hidden_dims = tuple(self.hidden_dims)
        for k in ("continuous", "ema", "kmeans_init", "token_embeddings", "rarity", "rarity_contrastive",
                  "rarity_gate", "item_item", "item_item_ids", "warm_content_skip", "warm_content_layer0",
                  "feature_residual", "aldi_tws", "freeze_tokenizer"):
            if not isinstance(getattr(self, k), bool):
                raise ConfigError(f"model.{k} must be true or false, got {getattr(self, k)!r}")


MOTOREC_ONLY_MODEL_KEYS = tuple(f.name for f in fields(ModelConfig)
                                if f.name != "name" and f.name not in BASELINE_MODEL_KEYS)


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
    seed: int = 0
    device: str = "cpu"
    backend: str = "auto"

    def validate(self) -> None:
        for k in ("epochs", "pretrain_epochs", "patience", "seed"):
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


@dataclass
class DataConfig:
    """How the dataset is split (the data itself is named on the command line)."""

    split: str = "cold"
    seed: int = 0

    def validate(self) -> None:
        if self.split not in ("cold", "warm"):
            raise ConfigError(f"data.split must be 'cold' or 'warm', got {self.split!r}")
        _nonneg_int(self, "seed")


@dataclass
class Config:
    """The whole experiment configuration."""

    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)

    def validate(self) -> "Config":
        self.model.validate()
        self.train.validate()
        self.data.validate()
        return self

    # ------------------------------------------------------------------ (de)serialization
    def to_dict(self) -> Dict[str, Dict[str, Any]]:
        d = dataclasses.asdict(self)
        d["model"]["hidden_dims"] = list(self.model.hidden_dims)
        return d

    @classmethod
    def from_dict(cls, d: Optional[Dict[str, Any]], *, saved: bool = False) -> "Config":
        """Build and validate a config from nested dicts; missing keys keep their defaults. A key that was
        replaced (:data:`REPLACED_KEYS`, e.g. ``train.select_group``) is refused naming its replacement, unless
        ``saved``: the stored config of a trained checkpoint, loaded to evaluate it, where it is dropped, and where
        a key of :data:`SAVED_BEFORE_KEY` it lacks (written before the key existed) takes the behaviour it had
        then (``model.warm_scorer``: ``joint``, ``model.cold_ensemble``: 1), not today's default."""
        d = {} if d is None else d
        if not isinstance(d, dict):
            raise ConfigError(f"a config must be a mapping with sections model/train/data, got {type(d).__name__}")
        for sec, replaced in REPLACED_KEYS.items():
            values = d.get(sec)
            old = sorted(set(values) & set(replaced)) if isinstance(values, dict) else []
            if old and not saved:
                raise ConfigError(f"{sec}.{old[0]} is no longer a setting: it was replaced by {replaced[old[0]]}")
            if old:
                d = {**d, sec: {k: v for k, v in values.items() if k not in replaced}}
        if saved:
            for sec, before in SAVED_BEFORE_KEY.items():
                values = d.get(sec)
                if isinstance(values, dict) and values:  # a section written before these keys existed
                    d = {**d, sec: {**before, **values}}
        unknown = set(d) - {"model", "train", "data"}
        if unknown:
            raise ConfigError(f"unknown config section(s) {sorted(unknown)}; expected model, train, data")
        sections = {}
        for name, klass in (("model", ModelConfig), ("train", TrainConfig), ("data", DataConfig)):
            sections[name] = _section(klass, d.get(name) or {}, name)
        return cls(**sections).validate()

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
        """A validated copy with some fields changed, e.g. ``cfg.replace(model={"name": "lightgcn"})``."""
        d = self.to_dict()
        for name, updates in sections.items():
            if name not in d:
                raise ConfigError(f"unknown config section {name!r}")
            d[name].update(updates)
        return Config.from_dict(d)

    def differences(self, other: Dict[str, Any] | "Config",
                    exclude_train: Tuple[str, ...] = RUN_ONLY_TRAIN_KEYS) -> list:
        """``["section.key: theirs -> ours", ...]`` for every setting that enters :meth:`fingerprint` and differs
        from ``other`` (a Config or its ``to_dict()``; a key ``other`` lacks, e.g. from an older version, shows
        as ``<missing>``)."""
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
        raise ConfigError(f"{_sec(obj)}.{k} must be a number, got {v!r}")
    return float(v)


def _nonneg_float(obj, k: str) -> None:
    if not 0.0 <= _float(obj, k) < float("inf"):  # also refuses NaN
        raise ConfigError(f"{_sec(obj)}.{k} must be a finite number >= 0, got {getattr(obj, k)}")


def _int(obj, k: str) -> int:
    v = getattr(obj, k)
    if isinstance(v, bool) or not isinstance(v, int):
        raise ConfigError(f"{_sec(obj)}.{k} must be an integer, got {v!r}")
    return v


def _positive_int(obj, k: str) -> None:
    if _int(obj, k) <= 0:
        raise ConfigError(f"{_sec(obj)}.{k} must be > 0, got {getattr(obj, k)}")


def _nonneg_int(obj, k: str) -> None:
    if _int(obj, k) < 0:
        raise ConfigError(f"{_sec(obj)}.{k} must be >= 0, got {getattr(obj, k)}")


def _sec(obj) -> str:
    return {ModelConfig: "model", TrainConfig: "train", DataConfig: "data"}[type(obj)]
