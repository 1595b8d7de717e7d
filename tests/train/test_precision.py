"""``train.precision: bf16``: the training steps' forward under a bfloat16 autocast, the quantizer's distances,
codes and losses kept in float32, everything else (parameters, optimizer, rankings) in float32."""
from __future__ import annotations

import math

import pytest
import torch

from motorec.config import Config, ConfigError
from motorec.data import synthetic
from motorec.nn import ResidualQuantizer
from motorec.train import Trainer

SMALL = {"motorec": dict(codebook_size=16, latent_dim=16, hidden_dims=[32], knn_k=5, knn_rebuild_every=2)}


def test_precision_is_checked():
    with pytest.raises(ConfigError, match="train.precision must be one of fp32, bf16, got 'fp16'"):
        Config().replace(train={"precision": "fp16"})
    assert Config().train.precision == "fp32"


def test_quantizer_keeps_float32_under_a_bf16_autocast():
    torch.manual_seed(0)
    q = ResidualQuantizer(dim=8, num_levels=3, codebook_size=16, kmeans_init=False, backend="torch").eval()
    x = torch.randn(64, 8)
    ref_q, ref_codes, ref_losses = q(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got_q, got_codes, got_losses = q(x)
        half_q, half_codes, _ = q(x.bfloat16())
    assert got_q.dtype == torch.float32 and got_losses.total.dtype == torch.float32
    assert torch.equal(got_codes, ref_codes) and torch.equal(got_q, ref_q)
    # a bf16 input is quantized as its exact float32 value, not in bf16 arithmetic
    assert torch.equal(half_codes, q(x.bfloat16().float())[1]) and half_q.dtype == torch.float32


def test_bf16_training_runs_its_matmuls_in_bf16_and_keeps_float32_parameters():
    ds = synthetic(200, 150, num_topics=6, modalities={"image": 16, "text": 8}, seed=2)
    cfg = Config().replace(model={"name": "motorec", "dim": 16}, **SMALL, wrappers={"ensemble": 1, "decoupled": False},
                           train={"epochs": 1, "pretrain_epochs": 1, "batch_size": 256, "patience": 0, "lr": 5e-3,
                                  "seed": 4, "precision": "bf16"})
    seen = []
    orig = torch.nn.Linear.forward

    def forward(self, x):
        out = orig(self, x)
        if torch.is_grad_enabled():
            seen.append(out.dtype)
        return out

    torch.nn.Linear.forward = forward
    try:
        trainer = Trainer(cfg, ds, quiet=True)
        res = trainer.fit()
    finally:
        torch.nn.Linear.forward = orig
    assert torch.bfloat16 in seen  # the steps' linears ran in bfloat16
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    assert all(math.isfinite(row["loss"]) for row in res["history"] if row["stage"] == "joint")
    assert 0.0 <= res["test"]["cold"]["recall@20"] <= 1.0
