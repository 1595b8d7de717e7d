"""The Python API for runs, above :mod:`motorec.train` and :mod:`motorec.eval`; ``motorec``'s command line only
parses arguments for it and prints what it returns.

* :func:`train_models` trains a set of models on one dataset into a run directory (``motorec train``), with
  :func:`build_config` for the run's config and :func:`load_data` / :func:`resolve_data` for ``data``;
* :func:`run_compare` trains models on several cold-item draws and seeds, one process per run
  (:mod:`motorec.experiments.worker`), and :func:`summarize` writes the mean ± sd and paired tests
  (``motorec compare``); :func:`collect` tabulates several comparisons side by side (``--collect``);
* :func:`evaluate_run`, :func:`tokenize`, :func:`recommend` use a finished run (``motorec evaluate``,
  ``tokenize``, ``recommend``).

A bad argument raises :class:`ArgumentError` naming it; :data:`USER_ERRORS` are the errors that mean the caller
asked for something wrong (as opposed to a file that could not be written, ``WriteError``).
"""
from motorec.experiments.compare import COMPARE_MODELS, GRID_LR, GRID_REG, REFERENCE, collect, run_compare, summarize
from motorec.experiments.errors import USER_ERRORS, ArgumentError, CompareError
from motorec.experiments.inference import Recommendations, Tokens, evaluate_run, open_run, recommend, tokenize
from motorec.experiments.training import INDUCTIVE, TrainResult, build_config, load_data, resolve_data, train_models

__all__ = ["train_models", "TrainResult", "build_config", "load_data", "resolve_data", "INDUCTIVE", "run_compare",
           "summarize", "collect", "CompareError", "COMPARE_MODELS", "GRID_LR", "GRID_REG", "REFERENCE", "evaluate_run",
           "tokenize", "Tokens", "recommend", "Recommendations", "open_run", "ArgumentError", "USER_ERRORS"]
