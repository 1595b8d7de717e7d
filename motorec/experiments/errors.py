"""Errors of the experiments API: a bad argument names the argument, so the command line can name its flag."""
from __future__ import annotations

import re
from typing import Callable

from motorec._dispatch import BackendUnavailable
from motorec.config import ConfigError
from motorec.data import DataError
from motorec.train.checkpoint import CheckpointError

__all__ = ["ArgumentError", "CompareError", "USER_ERRORS"]

_NAME = re.compile(r"`(\w+)`")


class ArgumentError(ValueError):
    """A bad value for an argument of a :mod:`motorec.experiments` function.

    ``template`` marks argument names with backticks (```top_k` must be >= 1, got 0``); ``str(error)`` shows
    them as the Python names (``top_k must be >= 1, got 0``) and :meth:`render` as anything else, e.g. the
    command line's flags (``--top-k must be >= 1, got 0``). :attr:`argument` is the first name marked.
    """

    def __init__(self, template: str) -> None:
        self.template = template
        first = _NAME.search(template)
        self.argument = first.group(1) if first else None
        super().__init__(self.render(lambda name: name))

    def render(self, name: Callable[[str], str]) -> str:
        """The message with each marked argument name replaced by ``name(argument)``."""
        return _NAME.sub(lambda m: name(m.group(1)), self.template)


class CompareError(ValueError):
    """An output directory :func:`motorec.experiments.run_compare` cannot continue: the other layout, another
    tuning grid, rule or config, or runs trained with other settings than their model's."""


# what a caller did wrong (bad argument, config, data, checkpoint or backend), as opposed to a failure of the
# machine (a file that cannot be written: motorec.train.checkpoint.WriteError) or a bug
USER_ERRORS = (ArgumentError, CompareError, ConfigError, DataError, CheckpointError, BackendUnavailable)
