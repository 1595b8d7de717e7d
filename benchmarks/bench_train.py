"""End-to-end benchmark: MoToRec training steps and full-ranking evaluation, ``backend=auto`` vs ``torch``.

Providers are the model's ``backend``: ``torch`` (every op on its pure-PyTorch reference, the baseline) and
``auto`` (the fastest backend that serves each op here). Modes:

* ``train``: one joint training step (``model.loss`` on a BPR batch, backward, Adam step), as
  :class:`motorec.train.Trainer` runs them; each step propagates the whole graph, runs the tokenizer on its
  sample (``model.tokenizer_sample``) and keeps every other item's tokens from the epoch's cache. Rate: interactions/s (batch pairs per second); the note gives the epoch time this implies
  (steps per epoch x median step).
* ``eval``: one full-ranking evaluation of the test split (:func:`motorec.eval.evaluate`, embeddings recomputed
  as the trainer does after ``model.eval()``). Rate: users/s.

Synthetic catalogs (:func:`motorec.data.synthetic`, cold-start split, image 256-d + text 384-d features):
30k users / 15k items / 300k interactions on CPU (``--full`` adds 100k / 100k / 1M), 100k and 1M items on a
GPU. Peak memory is in the ``peak_mem_mb`` column.

Checks before timing (the model is not one op, so the reference is ``backend=torch`` in float32): the
first step's loss and parameter gradients under ``auto`` agree with ``torch`` from the same seed (codes may
flip on near ties, hence loose bounds), and evaluation scores of a batch of users agree.

Run alone: ``python -m benchmarks.bench_train --quick``.
"""
from __future__ import annotations

import sys
from typing import Dict, List, Tuple

import torch

from benchmarks.harness import Case, CheckFailed, OpBench, Skip, check_close, main

LOSS_TOL = 1e-3
GRAD_TOL = 2e-2
SCORE_TOL = 1e-4
BATCH_SIZE = 2048
EVAL_BATCH = 1024
MODALITIES = {"image": 256, "text": 384}


def _imports():
    try:
        from motorec.config import Config
        from motorec.data import synthetic
        from motorec.eval import evaluate
        from motorec.models import build_model
        from motorec.train import BPRSampler, seed_everything
    except ImportError as e:
        raise Skip(f"motorec's model/train layer is not importable here ({e})") from None
    return Config, synthetic, evaluate, build_model, BPRSampler, seed_everything


class TrainBench(OpBench):
    op = "train"
    providers = ("torch", "auto")
    modes = ("train", "eval")
    default_modes = ("train", "eval")
    rate_unit = "interactions/s"

    def configs(self, size, device):
        if device.type == "cpu":
            cfgs = [dict(users=30_000, items=15_000, interactions=300_000)]
            if size == "full":
                cfgs.append(dict(users=100_000, items=100_000, interactions=1_000_000))
        else:
            cfgs = [dict(users=200_000, items=100_000, interactions=2_000_000)]
            if size == "full":
                cfgs.append(dict(users=1_000_000, items=1_000_000, interactions=10_000_000))
        return [(c, torch.float32) for c in cfgs]

    def shape_str(self, p):
        return f"users={p['users']},items={p['items']},interactions={p['interactions']}"

    def setup(self, params, dtype, device):
        Config, synthetic, evaluate, build_model, BPRSampler, seed_everything = _imports()
        ds = synthetic(params["users"], params["items"], num_interactions=params["interactions"],
                       modalities=MODALITIES, seed=0).to(device)
        sampler = BPRSampler(ds.train, ds.num_items, batch_size=BATCH_SIZE)
        gen = torch.Generator(device=device).manual_seed(0)
        batches: List[Dict[str, torch.Tensor]] = []
        for b in sampler.epoch(gen):
            batches.append(b)
            if len(batches) == 8:
                break
        return {"ds": ds, "batches": batches, "steps_per_epoch": len(sampler), "device": device, "ref": {},
                "mods": (Config, evaluate, build_model, seed_everything)}

    def _model(self, state, backend: str):
        Config, _, build_model, seed_everything = state["mods"]
        seed_everything(0)
        cfg = Config()  # the default MoToRec, with the default wrappers, as `motorec train` builds it
        model = build_model(state["ds"], cfg.settings(), wrappers=cfg.wrappers, backend=backend,
                            device=str(state["device"]))
        model.train()
        model.on_epoch_start(0)
        return model

    def _first_step(self, state, backend: str) -> Tuple[torch.nn.Module, float, torch.Tensor]:
        """A fresh model from seed 0, its first loss on batch 0 and its flattened parameter gradients."""
        model = self._model(state, backend)
        loss, _ = model.loss(state["batches"][0])
        if not bool(torch.isfinite(loss)):
            raise CheckFailed(f"backend={backend}: first loss is not finite ({float(loss)})")
        params = [p for p in model.parameters() if p.requires_grad]
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        flat = torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params)])
        return model, float(loss.detach()), flat.detach()

    def prepare(self, state, provider, mode):
        if provider not in self.providers:
            raise Skip(f"unknown provider {provider!r}")
        ds, batches = state["ds"], state["batches"]
        _, evaluate, _, _ = state["mods"]

        if mode == "train":
            model, loss0, grads0 = self._first_step(state, provider)
            from motorec.train import make_optimizer

            opt = make_optimizer(model, lr=1e-3)

            def check():
                if "train" not in state["ref"]:
                    ref = self._first_step(state, "torch")
                    state["ref"]["train"] = (ref[1], ref[2])
                ref_loss, ref_grads = state["ref"]["train"]
                err = abs(loss0 - ref_loss) / max(abs(ref_loss), 1e-12)
                if not err <= LOSS_TOL:
                    raise CheckFailed(f"first-step loss {loss0:.6g} vs backend=torch {ref_loss:.6g} "
                                      f"(relative {err:.2e} > {LOSS_TOL:.0e})")
                gerr = check_close(grads0, ref_grads, GRAD_TOL, "first-step gradients vs backend=torch")
                return max(err, gerr), ""

            def step(i):
                loss, _ = model.loss(batches[i])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                return loss

            bs = sum(int(b["users"].numel()) for b in batches) / len(batches)
            spe = state["steps_per_epoch"]
            return Case(step, len(batches), check, bs,
                        note=f"batch {BATCH_SIZE}",
                        describe=lambda med: f"epoch ~{spe * med / 1e3:.2f} s ({spe} steps)")

        if mode == "eval":
            model = self._model(state, provider)
            model.eval()
            users = torch.arange(min(EVAL_BATCH, ds.num_users), device=state["device"])
            case = Case(lambda i: None, 1, lambda: (0.0, ""), None, rate_unit="users/s")

            def run(i):
                model.eval()  # drops the cached embeddings: each evaluation recomputes them, as the trainer's
                return evaluate(model.score, ds, split="test", batch_size=EVAL_BATCH, device=state["device"])

            def check():
                scores = model.score(users)
                if "eval" not in state["ref"]:
                    ref = self._model(state, "torch")
                    ref.eval()
                    state["ref"]["eval"] = ref.score(users).detach()
                    del ref
                err = check_close(scores, state["ref"]["eval"], SCORE_TOL, "scores vs backend=torch")
                res = run(0)
                case.amount = float(res["hybrid"]["num_users"])
                return err, f"{int(case.amount)} test users"

            case.run, case.check = run, check
            return case
        raise Skip(f"mode {mode!r} is not supported by {self.op}")


BENCHES = [TrainBench()]

if __name__ == "__main__":
    sys.exit(main(BENCHES, description=__doc__))
