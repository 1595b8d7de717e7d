"""Training: the vectorized BPR sampler, the :class:`Trainer` (tokenizer pre-training, joint training, early
stopping, atomic checkpoints, exact resume) and :func:`run_experiment` used by the CLI."""
from motorec.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from motorec.train.sampler import BPRSampler
from motorec.train.trainer import Trainer, resolve_device, seed_everything

__all__ = ["BPRSampler", "Trainer", "CheckpointError", "load_checkpoint", "save_checkpoint", "seed_everything",
           "resolve_device"]
