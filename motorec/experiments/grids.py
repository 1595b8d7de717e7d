"""Each model's own key hyper-parameters for the comparison's tuning grid (issue 35, item 1), beside the
learning-rate and regularization grids every model gets (``GRID_LR`` and ``GRID_REG`` in
:mod:`motorec.experiments.compare`).

``TUNING_GRID[model][key]`` lists the values of key ``<model>.<key>`` (the model's own config section) to try:
two or three per key, the authors' default (the config's default) among them. A model without an entry has no
own key worth tuning.
"""
from __future__ import annotations

from typing import Dict, List

__all__ = ["TUNING_GRID"]

TUNING_GRID: Dict[str, Dict[str, List]] = {
    "knn": {"cold_k": [5, 10, 20]},
    "aldi": {"alpha": [0.5, 0.9], "beta": [0.05, 0.5], "gamma": [0.1, 1.0]},
    "aldi_published": {"alpha": [0.5, 0.9], "beta": [0.05, 0.5], "gamma": [0.1, 1.0],
                       "teacher_epochs": [20, 50, 100]},
    "dropoutnet": {"dropout": [0.2, 0.5, 0.8], "hidden": [200, 800]},
    "heater": {"experts": [3, 5, 10], "alpha": [1e-4, 1e-2, 0.5], "dropout": [0.2, 0.5, 0.8]},
    "clcrec": {"temperature": [0.2, 2.0], "lr_lambda": [0.2, 0.5, 0.8], "num_sample": [0.2, 0.5, 0.8]},
    "gar": {"alpha": [0.05, 0.2, 0.5], "beta": [0.1, 0.3, 0.5]},
}
