"""Checks of user input shared by components, streams, strategies and the front: one wording per rule.

Each ``check_*`` returns the value when it is valid and otherwise raises a
ConfigurationError ``"<owner>: field '<field>' must be <rule>, got <value>"``;
``kind_of`` names a bad value's kind in such messages. A bool is never taken
for a number (``True`` is not ``1`` worker), and a number of seconds is finite
(``0 < x < inf``, so NaN is refused too). Imports nothing from the package but
the errors, so every layer from the model up may use it.

See docs/errors.md.
"""

from __future__ import annotations

import math
import re
from typing import Any

from dynapipeline.errors import ConfigurationError

__all__ = ["as_float", "check_bytes", "check_flag", "check_int", "check_max_workers", "check_rate", "check_seconds",
           "is_int", "kind_of"]


def kind_of(value: object) -> str:
    """How a message names a bad value's kind; a class passed where an instance belongs says so."""
    if isinstance(value, type):
        # Components take keyword fields; the rest (strategies, handlers) vary.
        example = "name=..." if hasattr(value, "model_fields") and "name" in value.model_fields else "..."
        return f"the class {value.__name__} (pass an instance: {value.__name__}({example}))"
    return type(value).__name__


def is_int(value: object) -> bool:
    """Whether ``value`` is an int and not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def as_float(value: Any) -> float | None:
    """``value`` as a float if it is an int or a float (bools are not) that fits one, else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        return float(value)
    except OverflowError:  # an int beyond the largest float
        return None


def check_flag(owner: str, field: str, value: object) -> bool:
    """An on/off option: exactly ``True`` or ``False`` (not 1, "yes" or None)."""
    if not isinstance(value, bool):
        raise ConfigurationError(f"{owner}: field {field!r} must be a bool (True or False), got {value!r}")
    return value


def check_int(owner: str, field: str, value: Any, *, least: int, most: int | None = None,
              optional: bool = False) -> Any:
    """An int ``>= least`` (and ``<= most``, an unstated bound such as a C integer's), or None when ``optional``."""
    if optional and value is None:
        return value
    if not is_int(value) or value < least or (most is not None and value > most):
        alternative = " or None" if optional else ""
        raise ConfigurationError(f"{owner}: field '{field}' must be an int >= {least}{alternative}, got {value!r}")
    return value


def check_max_workers(owner: str, max_workers: object) -> int | None:
    """``max_workers`` of a pool strategy: an int >= 1, or None for the strategy's default."""
    checked: int | None = check_int(owner, "max_workers", max_workers, least=1, optional=True)
    return checked


def check_seconds(owner: str, field: str, value: Any, *, optional: bool = False) -> Any:
    """A finite number of seconds > 0 (not a bool, not NaN), or None when ``optional``."""
    if optional and value is None:
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        alternative = " or None" if optional else ""
        raise ConfigurationError(f"{owner}: field '{field}' must be a finite number of seconds > 0{alternative}, "
                                 f"got {value!r}")
    return value


def check_rate(owner: str, value: Any) -> float:
    """A rate (starts per second): a finite number > 0 whose interval ``1 / rate`` is finite too."""
    rate = as_float(value)
    if rate is None or not 0 < rate < math.inf or not math.isfinite(1 / rate):
        raise ConfigurationError(f"{owner}: field 'rate' must be a finite number > 0, got {value!r}")
    return rate


_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}
_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*")


def check_bytes(owner: str, field: str, value: Any, *, optional: bool = False) -> Any:
    """A size in bytes > 0: an int, or a string such as ``"300MB"``, ``"1.5GB"``, ``"512MiB"`` (None when ``optional``).

    kB/MB/GB/TB are powers of 1000, KiB/MiB/GiB/TiB powers of 1024 (any case); the int of bytes is returned.
    """
    if optional and value is None:
        return value
    size = value if is_int(value) else None
    if isinstance(value, str):
        match = _SIZE.fullmatch(value.lower())
        if match is not None and match.group(2) in _UNITS:
            size = int(float(match.group(1)) * _UNITS[match.group(2)])
    if size is None or size < 1:
        alternative = " or None" if optional else ""
        raise ConfigurationError(f"{owner}: field {field!r} must be a number of bytes > 0 (an int, or a string "
                                 f"such as '300MB', '1.5GB' or '512MiB'){alternative}, got {value!r}")
    return size
