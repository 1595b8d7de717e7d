"""Training: the vectorized BPR sampler, the :class:`Trainer` (tokenizer pre-training, joint training, early
stopping, atomic checkpoints, exact resume), :class:`RunDir` (the files of a run), and :func:`load_run` to get a
trained model back from a run directory."""
from motorec.train.checkpoint import CheckpointError, WriteError, atomic_write, load_checkpoint, save_checkpoint
from motorec.train.device import cpu_allocator, resolve_device
from motorec.train.runs import RunDir, load_run, load_trained, read_run_info, run_info
from motorec.train.sampler import BPRSampler
from motorec.train.trainer import Trainer, make_optimizer, seed_everything, select_score

__all__ = ["BPRSampler", "Trainer", "CheckpointError", "load_checkpoint", "save_checkpoint", "seed_everything",
           "make_optimizer", "resolve_device", "select_score", "load_run", "load_trained", "read_run_info",
           "run_info", "RunDir", "WriteError", "atomic_write", "cpu_allocator"]
