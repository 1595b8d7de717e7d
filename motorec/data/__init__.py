"""Datasets for motorec: validated once here, at the boundary, then handed on as tensors.

* :class:`Dataset`: users, items, train/valid/test ``(user, item)`` pairs, per-item modality features,
  cold-start bookkeeping, :meth:`~Dataset.fingerprint` and :meth:`~Dataset.train_graph`.
* :func:`load_mmrec`: an MMRec-format folder (``<name>.inter`` + ``*_feat.npy``).
* :func:`load_movielens100k`: the bundled real default, read from the ``recbole`` wheel, with text
  (all-MiniLM-L6-v2) and metadata modalities.
* :func:`synthetic`: topic-driven synthetic data of any size, content predicting preference;
  :func:`load_synthetic_spec` builds it from a ``synthetic[:key=value,...]`` string (``motorec train --data``).
* :func:`cold_start_split` / :func:`warm_split`: the two evaluation protocols.
* :class:`DataError`: every data problem (a ``ValueError`` with a one-line message).
"""
from motorec.data.dataset import SPLITS, DataError, Dataset
from motorec.data.mmrec import load_mmrec
from motorec.data.movielens import load_movielens100k
from motorec.data.split import SplitResult, cold_start_split, per_user_labels, warm_split
from motorec.data.synthetic import SYNTHETIC_SPEC, load_synthetic_spec, parse_synthetic_spec, synthetic

__all__ = ["Dataset", "DataError", "SPLITS", "load_mmrec", "load_movielens100k", "synthetic",
           "SYNTHETIC_SPEC", "parse_synthetic_spec", "load_synthetic_spec",
           "cold_start_split", "warm_split", "per_user_labels", "SplitResult"]
