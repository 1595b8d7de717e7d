"""Training: the vectorized BPR sampler, the :class:`Trainer` (tokenizer pre-training, joint training, early
stopping, atomic checkpoints, exact resume), and :func:`load_run` to get a trained model back from a run
directory."""
from motorec.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from motorec.train.runs import load_run, load_trained, read_run_info
from motorec.train.sampler import BPRSampler
from motorec.train.trainer import Trainer, resolve_device, seed_everything

__all__ = ["BPRSampler", "Trainer", "CheckpointError", "load_checkpoint", "save_checkpoint", "seed_everything",
           "resolve_device", "load_run", "load_trained", "read_run_info"]
