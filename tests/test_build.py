"""The engine picker, the command line's ``info``, and the Pythons the package says it supports."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import dynapipeline
from dynapipeline import _engine as engine

ROOT = Path(__file__).resolve().parent.parent


def _python(code: str, **env: str) -> str:
    full_env = {k: v for k, v in os.environ.items() if k != "DYNAPIPELINE_NO_EXTENSIONS"}
    full_env.update(env)
    return subprocess.run([sys.executable, "-c", code], env=full_env, capture_output=True,
                          text=True, check=True).stdout.strip()


def test_no_extensions_at_runtime_selects_pure_engine():
    assert _python("import dynapipeline; print(dynapipeline.compiled)", DYNAPIPELINE_NO_EXTENSIONS="1") == "False"
    assert _python("import dynapipeline._engine as e; print(e._core.__name__)",
                   DYNAPIPELINE_NO_EXTENSIONS="1") == "dynapipeline._engine.core_py"


def test_compiled_flag_matches_the_module_in_use():
    if dynapipeline.compiled:
        assert engine._core.__name__ == "dynapipeline._engine.core_c"
        assert engine._core.__file__.endswith((".so", ".pyd"))
    else:
        assert engine._core.__name__ == "dynapipeline._engine.core_py"


def test_built_engine_is_picked_without_the_variable():
    # The compiled leg requires the extension to be built; the pure leg just checks the picker agrees.
    out = _python("import dynapipeline; print(dynapipeline.compiled)")
    expected = os.environ.get("DYNAPIPELINE_TEST_MODE")
    if expected == "compiled":
        assert out == "True"
    assert out in ("True", "False")


def test_info_command_prints_engine_loop_and_versions():
    env = {k: v for k, v in os.environ.items()}
    out = subprocess.run([sys.executable, "-m", "dynapipeline", "info"], env=env, capture_output=True,
                         text=True, check=True).stdout
    assert f"dynapipeline {dynapipeline.__version__}" in out
    assert f"engine: {'compiled' if dynapipeline.compiled else 'pure'}" in out
    assert f"shared-memory copy: {'streamed' if dynapipeline.compiled else 'memcpy'}" in out
    assert f"process items: {'compiled' if dynapipeline.compiled and sys.platform == 'linux' else 'pure'} loop" in out
    assert f"loop: {dynapipeline.loop_name()}" in out
    assert "python: 3." in out


def test_compiled_engine_has_the_c_types_of_core_c_pxd():
    # core_c.pxd declares Slots._waiters as a C field (not `public`): compiled, Python cannot reach it;
    # if the build compiled core_py.py without the .pxd, it would be an ordinary attribute as in the pure engine.
    slots = engine.Slots(2)
    assert slots.limit == 2  # `public` in the .pxd: readable either way
    if dynapipeline.compiled:
        assert not hasattr(slots, "_waiters")
        assert type(slots).__dictoffset__ == 0  # a cdef class: no instance __dict__
    else:
        assert hasattr(slots, "_waiters")


def test_classifiers_and_requires_python_name_exactly_the_pythons_make_test_runs():
    # `make test` runs the four legs on the oldest supported Python and one leg on each of EXTRA_PYTHONS.
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    makefile = (ROOT / "Makefile").read_text()
    extra = re.search(r"^EXTRA_PYTHONS := (.+)$", makefile, re.MULTILINE)
    assert extra, "the Makefile names no EXTRA_PYTHONS for `make test`"
    oldest = re.fullmatch(r">=(3\.\d+)", pyproject["project"]["requires-python"])
    assert oldest, pyproject["project"]["requires-python"]
    tested = [oldest.group(1), *extra.group(1).split()]
    classified = [c.rsplit(" :: ", 1)[1] for c in pyproject["project"]["classifiers"]
                  if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)]
    assert sorted(classified) == sorted(tested)
    # Linted and type-checked for the oldest, so nothing newer slips into the code.
    assert pyproject["tool"]["mypy"]["python_version"] == oldest.group(1)
    assert pyproject["tool"]["ruff"]["target-version"] == "py" + oldest.group(1).replace(".", "")
