"""Benchmark of ``motorec.ops.rank_topk``: per-user top-k over all, warm and cold items with each user's training
items excluded and a per-item affine on the cold items' scores (what :func:`motorec.eval.evaluate` ranks).

Providers (``torch`` is the speedup baseline):

* ``torch``: the reference (:mod:`motorec.reference.rank_topk`: dense [B, I] scores, exclusions, a stable sort
  per ranking) through ``motorec.ops.rank_topk(..., backend="torch")``;
* ``cpu``: the C++ OpenMP kernel (BLAS score tiles, three sorted top-k buffers per row; never [B, I]).

Mode: ``forward`` (the op has no backward).

Check before timing: the provider's three rankings and NaN flags equal the reference's index for index (the
inputs are random floats; an exact tie is improbable, a swap within rounding would show as a failed check, with
the number of differing entries).

Rate: items/s (user-item pairs scored per second, B * I).

Run alone: ``python -m benchmarks.bench_rank_topk --quick``.
"""
from __future__ import annotations

import sys

import torch

from benchmarks.harness import Case, CheckFailed, OpBench, Skip, main
from motorec import ops
from motorec.reference import rank_topk as ref_rt

K = 20


def _shape(b, n, d, cold=0.2, excl=40):
    return {"B": b, "I": n, "d": d, "cold": cold, "excl": excl}


class RankTopKBench(OpBench):
    op = "rank_topk"
    providers = ("torch", "cpu")
    modes = ("forward",)
    default_modes = ("forward",)
    rate_unit = "items/s"

    def configs(self, size, device):
        f32 = torch.float32
        quick = [_shape(1024, 15000, 64), _shape(1024, 100000, 64)]
        if size == "quick":
            return [(s, f32) for s in quick]
        return [(s, f32) for s in quick + [_shape(4096, 15000, 64), _shape(1024, 15000, 128, cold=0.5)]]

    def shape_str(self, p):
        return f"B={p['B']},I={p['I']},d={p['d']},k={K},cold={p['cold']},excl={p['excl']}"

    def setup(self, params, dtype, device):
        b, n, d = params["B"], params["I"], params["d"]
        gen = torch.Generator(device="cpu").manual_seed(1234)
        users = torch.randn(b, d, generator=gen).to(device=device, dtype=dtype)
        items = torch.randn(n, d, generator=gen).to(device=device, dtype=dtype)
        cold = (torch.rand(n, generator=gen) < params["cold"]).to(device)
        scale = torch.where(cold, 0.8, 1.0).to(dtype)
        shift = torch.where(cold, 0.1, 0.0).to(dtype)
        counts = torch.randint(0, 2 * params["excl"] + 1, (b,), generator=gen)
        rowptr = torch.zeros(b + 1, dtype=torch.int64)
        rowptr[1:] = torch.cumsum(counts, 0)
        col = torch.randint(0, n, (int(rowptr[-1]),), generator=gen)
        col = torch.cat([col[rowptr[r]:rowptr[r + 1]].sort().values for r in range(b)])
        args = dict(item_scale=scale, item_shift=shift, exclude_rowptr=rowptr.to(device),
                    exclude_col=col.to(device), cold=cold)
        return {"users": users, "items": items, "args": args, "dtype": dtype, "params": params, "ref": None}

    def _reference(self, state):
        if state["ref"] is None:
            a = state["args"]
            state["ref"] = ref_rt.rank_topk_forward(state["users"], state["items"], K, a["item_scale"],
                                                    a["item_shift"], a["exclude_rowptr"], a["exclude_col"],
                                                    a["cold"])
        return state["ref"]

    def prepare(self, state, provider, mode):
        if provider not in self.providers:
            raise Skip(f"unknown provider {provider!r}")
        if mode != "forward":
            raise Skip(f"mode {mode!r} is not supported by {self.op} (forward only)")
        users, items, args = state["users"], state["items"], state["args"]
        ops.select_backend(self.op, provider, device=users.device.type, dtype=state["dtype"],
                           dim=users.shape[1])  # raises BackendUnavailable: recorded as a skip
        p = state["params"]

        def run(i):
            return ops.rank_topk(users, items, K, backend=provider, **args)

        def check():
            got = run(0)
            bad = sum(int((a != w).sum()) for a, w in zip(got, self._reference(state)))
            if bad:
                raise CheckFailed(f"{bad} entries of the rankings differ from the reference")
            return 0.0, ""

        return Case(run, 1, check, float(p["B"] * p["I"]))


BENCHES = [RankTopKBench()]

if __name__ == "__main__":
    sys.exit(main(BENCHES, description=__doc__))
