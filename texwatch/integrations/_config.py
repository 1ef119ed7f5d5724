"""``plain_config``: hyperparameters as the JSON a run's ``config`` holds, whatever they contain.

Trackers receive ``vars(args)`` and Lightning ``hparams``: paths, dtypes, modules, NaN. A run's
config must be JSON without NaN, so storing the hyperparameters must not fail on them.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["plain_config"]


def plain_config(values: Mapping[str, Any] | argparse.Namespace) -> dict[str, Any]:
    """``values`` as JSON: mappings and sequences kept, numpy numbers and paths converted,
    non-finite floats and anything else stored as its ``str()``."""
    if isinstance(values, argparse.Namespace):
        values = vars(values)
    if not isinstance(values, Mapping):
        raise TypeError(
            f"Expected argument `config` to be a dict or argparse.Namespace but got "
            f"{type(values).__name__}"
        )
    return {str(k): _plain(v) for k, v in values.items()}


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, np.generic):
        return _plain(value.item())
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return str(value)
