"""Data-parallel training on ``torch.distributed`` (DDP): NCCL on GPUs, gloo on CPU, launched by ``torchrun``.

How a run is split across ``W`` ranks:

* **Batches.** Every rank draws the *same* global batch (same seed, same sampler generator) and keeps its
  contiguous shard of it (:meth:`DistContext.shard`). The ranks' random streams therefore never diverge,
  and a run on W ranks sees exactly the batches of a one-process run with the same ``batch_size``.
* **Gradients.** The model runs inside :class:`~torch.nn.parallel.DistributedDataParallel`, which averages
  gradients over ranks. Each rank's loss is scaled by ``W * n_rank / n_global`` so that the average of the
  ranks' per-shard means is the mean over the global batch, also for an uneven last batch. Losses that are
  means over samples (BPR, the L2 term, reconstruction) are then exactly the one-process loss; terms that
  couple the samples of a batch (InfoNCE's in-batch negatives, rarity weights normalized over the batch's
  positives, the sparsity KL of a batch's mean code usage) are computed per shard, as usual for DDP.
* **The graph** (user-item adjacency, item-item kNN graphs) is replicated: every rank holds all of it.
* **Codebook statistics.** Pre-training shards the items of each batch, so :class:`~motorec.nn.quantizer
  .ResidualQuantizer` all-reduces its usage counts and EMA sums and broadcasts k-means centroids and
  re-seeded codewords from rank 0 (its ``statistics_sync``, :data:`motorec.nn.codebook.SHARDED` by
  default). In joint training MoToRec's tokenizers run over the whole catalog on every rank, so the
  statistics are already global on each rank: summing them would count every item ``W`` times, and
  :func:`replicated_statistics` switches the quantizers to :data:`~motorec.nn.codebook.REPLICATED` there
  (no all-reduce; the broadcasts stay, so random re-seeds agree).
* **Random streams** are re-aligned to rank 0's before every step (:func:`sync_rng`), so replicated random
  choices agree across ranks and rank 0's checkpointed RNG state is every rank's.
* **Rank 0** evaluates (the result is broadcast, so early stopping agrees), writes checkpoints and loads
  them on resume (the state is broadcast: no shared file system needed across machines).

``motorec train`` calls :func:`init_from_env` itself: under ``torchrun`` (``WORLD_SIZE > 1``) it creates
the process group; in a plain process it does nothing and training is unchanged. See docs/DISTRIBUTED.md.
"""
from __future__ import annotations

import atexit
import contextlib
import datetime
import os
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = ["DistContext", "init_from_env", "current", "shutdown", "make_step", "on_main", "load_on_main",
           "replicated_statistics", "sync_rng"]

_CURRENT: Optional["DistContext"] = None


class DistContext:
    """The process group of this run: rank, world size, the rank's device, and the collectives motorec uses.

    Build it with :func:`init_from_env` (torchrun) or directly after ``dist.init_process_group``.
    """

    def __init__(self, *, device: torch.device) -> None:
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("DistContext needs an initialized torch.distributed process group")
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.local_rank = int(os.environ.get("LOCAL_RANK", self.rank))
        self.device = device
        self.backend = dist.get_backend()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def __repr__(self) -> str:
        return (f"DistContext(rank={self.rank}, world_size={self.world_size}, local_rank={self.local_rank}, "
                f"device={self.device}, backend={self.backend!r})")

    # ------------------------------------------------------------------ batches
    def shard_bounds(self, n: int) -> Tuple[int, int]:
        """``[start, stop)`` of this rank's contiguous shard of ``n`` samples (sizes differ by at most one)."""
        base, extra = divmod(n, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return start, start + base + (1 if self.rank < extra else 0)

    def shard(self, batch):
        """This rank's shard of a global batch and the loss scale ``W * n_rank / n``.

        ``batch`` is a tensor (rows are samples) or a dict of equal-length tensors. A rank whose shard would
        be empty (``n < W``) runs the first sample with scale 0: it still joins the gradient all-reduce, and
        a loss over zero samples (a mean of nothing) cannot turn the average into NaN.
        """
        n = _batch_len(batch)
        start, stop = self.shard_bounds(n)
        if stop > start:
            return _slice(batch, start, stop), self.world_size * (stop - start) / n
        return _slice(batch, 0, min(1, n)), 0.0

    # ------------------------------------------------------------------ collectives
    def broadcast_object(self, obj: Any) -> Any:
        """``obj`` of rank 0 on every rank (pickled; tensors should be on the CPU)."""
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0, device=self._object_device())
        return box[0]

    def barrier(self) -> None:
        if self.backend == "nccl":
            dist.barrier(device_ids=[self.device.index if self.device.index is not None else 0])
        else:
            dist.barrier()

    def _object_device(self) -> Optional[torch.device]:
        return self.device if self.backend == "nccl" else None


def _batch_len(batch) -> int:
    if isinstance(batch, Tensor):
        return int(batch.shape[0])
    lens = {int(v.shape[0]) for v in batch.values() if isinstance(v, Tensor)}
    if len(lens) != 1:
        raise ValueError(f"a batch dict must hold tensors of one length, got lengths {sorted(lens)}")
    return lens.pop()


def _slice(batch, start: int, stop: int):
    if isinstance(batch, Tensor):
        return batch[start:stop]
    return {k: (v[start:stop] if isinstance(v, Tensor) else v) for k, v in batch.items()}


# ---------------------------------------------------------------------------------------------- setup
def current() -> Optional[DistContext]:
    """The active :class:`DistContext`, or ``None`` in a single-process run."""
    return _CURRENT


def init_from_env(device: str = "cpu", *, timeout_s: float = 1800.0) -> Optional[DistContext]:
    """Join the process group that ``torchrun`` describes in the environment, if any.

    ``WORLD_SIZE`` unset or 1: returns ``None`` (single process, nothing changes). Otherwise initializes
    ``torch.distributed`` (``nccl`` when ``device`` is CUDA, else ``gloo``; ``MOTOREC_DIST_BACKEND`` overrides)
    from ``MASTER_ADDR``/``MASTER_PORT``/``RANK``/``WORLD_SIZE``, pins each rank to ``cuda:LOCAL_RANK`` for a
    CUDA device, and makes the context current (the :class:`~motorec.train.Trainer` picks it up).
    Calling it again returns the same context.
    """
    global _CURRENT
    if _CURRENT is not None:
        return _CURRENT
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    dev = torch.device(device)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {device!r}: CUDA is not available on this machine")
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} CUDA device(s) are "
                               "visible; use --nproc_per_node <= the number of GPUs")
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    backend = os.environ.get("MOTOREC_DIST_BACKEND") or ("nccl" if dev.type == "cuda" else "gloo")
    if not dist.is_initialized():
        kw = {"device_id": dev} if backend == "nccl" else {}
        dist.init_process_group(backend, init_method="env://", timeout=datetime.timedelta(seconds=timeout_s), **kw)
    _CURRENT = DistContext(device=dev)
    atexit.register(shutdown)
    return _CURRENT


def activate(ctx: Optional[DistContext]) -> None:
    """Make ``ctx`` current (for a process group created by the caller, e.g. in tests)."""
    global _CURRENT
    _CURRENT = ctx


def shutdown() -> None:
    """Leave the process group (if this module created one) and forget the context."""
    global _CURRENT
    if _CURRENT is not None and dist.is_initialized():
        dist.destroy_process_group()
    _CURRENT = None


def local_device(ctx: Optional[DistContext], device: torch.device) -> torch.device:
    """The device a rank trains on: ``cuda:LOCAL_RANK`` when ``device`` is CUDA under a process group."""
    if ctx is None or device.type != "cuda":
        return device
    return ctx.device


# ---------------------------------------------------------------------------------------------- training
@contextlib.contextmanager
def replicated_statistics(model: nn.Module) -> Iterator[None]:
    """Within the block, quantizers of ``model`` do not all-reduce their statistics (every rank already
    computed them over the same, whole catalog); broadcasts of random choices still happen."""
    from motorec.nn.codebook import REPLICATED
    from motorec.nn.quantizer import statistics_sync

    with statistics_sync(model, REPLICATED):
        yield


class _Step(nn.Module):
    """What DDP wraps: ``forward(name, batch)`` calls ``model.<name>(batch)`` (``loss``/``pretrain_loss``),
    so that DDP's gradient hooks are armed for whichever loss the trainer runs."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, name: str, batch):
        return getattr(self.model, name)(batch)


def make_step(model: nn.Module, ctx: Optional[DistContext]) -> Callable[[str, Any], Tuple[Tensor, Dict[str, float]]]:
    """``step(name, global_batch) -> (loss, parts)`` running ``model.<name>`` on this rank's shard.

    Single process (``ctx is None``): calls the model directly. Distributed: through DDP, with the loss
    scaled for exact gradient averaging (see the module docstring); ``parts`` are this rank's values.
    """
    if ctx is None:
        return lambda name, batch: getattr(model, name)(batch)
    held: Dict[str, Any] = {}

    def step(name: str, batch):
        if held.get("name") != name:  # a new stage: pre-training and joint training use different parameters
            held.clear()  # drops the previous DDP and its gradient hooks first
            held.update(name=name, ddp=_wrap(model, ctx))
        shard, scale = ctx.shard(batch)
        sync_rng(ctx)
        stats = replicated_statistics(model) if name == "loss" else contextlib.nullcontext()
        with stats:
            loss, parts = held["ddp"](name, shard)
        return loss * scale, parts

    return step


def _wrap(model: nn.Module, ctx: DistContext) -> nn.Module:
    import warnings

    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    # static_graph: each stage uses the same parameters every step, some of them never (pre-training touches
    # only the tokenizers; ablations such as continuous=true leave the codebooks out); DDP finds them on
    # the first step instead of walking the autograd graph every step (find_unused_parameters).
    # broadcast_buffers=False: buffers (features, graphs, codebook statistics) are identical by
    # construction, and re-broadcasting the item features every step would cost more than the step.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*broadcast_buffers.*", category=FutureWarning)
        return DDP(_Step(model), device_ids=ids, broadcast_buffers=False, static_graph=True)


def sync_rng(ctx: DistContext) -> None:
    """Give every rank rank 0's global torch RNG state (CPU, and CUDA when used).

    Shards of an uneven batch draw different amounts of per-sample randomness (e.g. MoToRec's cold-view
    dropout), which would leave the ranks' streams apart; re-aligning them before each step keeps replicated
    random choices (ID dropout over the whole catalog) equal on every rank and makes rank 0's checkpointed
    RNG state valid for all ranks, so a resumed run repeats an uninterrupted one. The price: equal-size
    shards draw the same per-position random numbers (their samples differ).
    """
    states = [torch.get_rng_state()]
    if ctx.device.type == "cuda":
        states.append(torch.cuda.get_rng_state(ctx.device))
    for i, st in enumerate(states):
        t = st.to(ctx.device) if ctx.backend == "nccl" else st.clone()
        dist.broadcast(t, src=0)
        states[i] = t.cpu()
    torch.set_rng_state(states[0])
    if ctx.device.type == "cuda":
        torch.cuda.set_rng_state(states[1], ctx.device)


def on_main(ctx: Optional[DistContext], fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on rank 0 only and return its result on every rank (an exception on rank 0 is raised on
    every rank, with its type when it is a motorec error, so that all ranks stop alike)."""
    if ctx is None:
        return fn()
    out: Any = None
    if ctx.is_main:
        try:
            out = ("ok", fn())
        except Exception as e:  # shipped to the other ranks, then re-raised here too
            out = ("error", e)
    kind, value = ctx.broadcast_object(out)
    if kind == "error":
        raise value
    return value


def load_on_main(ctx: Optional[DistContext], load: Callable[..., Dict[str, Any]], path, *,
                 map_location) -> Dict[str, Any]:
    """``load(path, map_location=...)`` on rank 0, its result broadcast (CPU tensors) to every rank."""
    if ctx is None:
        return load(path, map_location=map_location)
    return on_main(ctx, lambda: load(path, map_location="cpu"))
