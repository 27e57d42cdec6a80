"""The shared input checks: one wording per rule, bools never taken for numbers, NaN and inf refused as seconds."""

from __future__ import annotations

import math
import sys
from typing import Any

import pytest

from dynapipeline import Stage
from dynapipeline._model.checks import (
    as_float,
    check_flag,
    check_int,
    check_max_workers,
    check_seconds,
    is_int,
    kind_of,
)
from dynapipeline.errors import ConfigurationError


class Named(Stage):
    async def execute(self) -> None:
        return None


@pytest.mark.parametrize("value", [True, False])
def test_flag_takes_exactly_a_bool(value: bool) -> None:
    assert check_flag("Owner", "chain", value) is value


@pytest.mark.parametrize("value", [1, 0, "yes", None])
def test_flag_refuses_anything_else(value: Any) -> None:
    with pytest.raises(ConfigurationError) as error:
        check_flag("Owner", "chain", value)
    assert str(error.value) == f"Owner: field 'chain' must be a bool (True or False), got {value!r}"


@pytest.mark.parametrize("value", [0, 5, sys.maxsize])
def test_int_in_range_is_returned(value: int) -> None:
    assert check_int("Owner", "cycles", value, least=0, most=sys.maxsize) == value


@pytest.mark.parametrize("value", [-1, True, 2.0, "3", None, sys.maxsize + 1])
def test_int_out_of_range_or_of_another_kind_is_refused(value: Any) -> None:
    with pytest.raises(ConfigurationError) as error:
        check_int("Owner", "cycles", value, least=0, most=sys.maxsize)
    assert str(error.value) == f"Owner: field 'cycles' must be an int >= 0, got {value!r}"


def test_int_without_upper_bound_takes_any_size() -> None:
    assert check_int("Owner", "maxsize", 10**30, least=1) == 10**30


def test_optional_int_takes_none_and_says_so() -> None:
    assert check_int("Owner", "batch", None, least=1, optional=True) is None
    with pytest.raises(ConfigurationError) as error:
        check_int("Owner", "batch", 0, least=1, optional=True)
    assert str(error.value) == "Owner: field 'batch' must be an int >= 1 or None, got 0"


def test_max_workers_is_an_optional_int_of_at_least_one() -> None:
    assert check_max_workers("Pool", None) is None
    assert check_max_workers("Pool", 3) == 3
    with pytest.raises(ConfigurationError) as error:
        check_max_workers("Pool", True)
    assert str(error.value) == "Pool: field 'max_workers' must be an int >= 1 or None, got True"


@pytest.mark.parametrize("value", [0.001, 1, 2.5, 10**30])
def test_seconds_positive_and_finite_are_returned(value: float) -> None:
    assert check_seconds("Owner", "interval", value) == value


@pytest.mark.parametrize("value", [0, -1.0, math.inf, math.nan, True, "1", None])
def test_seconds_otherwise_are_refused(value: Any) -> None:
    with pytest.raises(ConfigurationError) as error:
        check_seconds("Owner", "interval", value)
    assert str(error.value) == f"Owner: field 'interval' must be a finite number of seconds > 0, got {value!r}"


def test_optional_seconds_take_none_and_say_so() -> None:
    assert check_seconds("Owner", "batch_timeout", None, optional=True) is None
    with pytest.raises(ConfigurationError, match=r"seconds > 0 or None, got 0$"):
        check_seconds("Owner", "batch_timeout", 0, optional=True)


def test_is_int_and_as_float_do_not_take_bools_for_numbers() -> None:
    assert is_int(3) and not is_int(True) and not is_int(3.0)
    assert as_float(2) == 2.0 and as_float(True) is None and as_float("2") is None
    assert as_float(10**400) is None  # beyond the largest float


def test_kind_of_names_the_type_or_a_class_passed_for_an_instance() -> None:
    assert kind_of(3) == "int"
    assert kind_of(Named) == "the class Named (pass an instance: Named(name=...))"
    assert kind_of(dict) == "the class dict (pass an instance: dict(...))"
