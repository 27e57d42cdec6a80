"""The wheel a user installs: built from the repository's files, its file list, and a fresh venv using it.

Building compiles the engine (10-20 s), so this runs only when ``DYNAPIPELINE_TEST_WHEEL=1``;
``make test`` sets it for one leg. It needs setuptools and Cython in the test environment
(the ``dev`` extra installs both) and builds without network access (no build isolation).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
pytestmark = pytest.mark.skipif(os.environ.get("DYNAPIPELINE_TEST_WHEEL") != "1",
                                reason="builds and installs a wheel; set DYNAPIPELINE_TEST_WHEEL=1")


def _clean_env() -> dict[str, str]:
    """The environment without this leg's engine and loop choices (they would change what the wheel reports)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("DYNAPIPELINE_")}


def _repository_files() -> list[str]:
    """What a fresh clone holds (tracked and new files, minus ignored ones such as build outputs)."""
    out = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         capture_output=True, text=True, check=True).stdout
    return [name for name in out.split("\0") if name and (ROOT / name).exists()]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """(wheel path, build log). The repository files are copied first, so the working tree's
    ``build/``, generated ``.c`` and ``.so`` files can neither leak into the wheel nor be written."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout to know which files are the repository's")
    work = tmp_path_factory.mktemp("wheel")
    source = work / "src"
    for name in _repository_files():
        target = source / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target, follow_symlinks=False)
    dist = work / "dist"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "-v",
         "-w", str(dist)],
        # The wheel must carry the compiled engine: a fallback to pure Python fails the build here.
        capture_output=True, text=True, env={**_clean_env(), "DYNAPIPELINE_REQUIRE_EXTENSIONS": "1"}, timeout=600,
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, log
    wheels = list(dist.glob("dynapipeline-*.whl"))
    assert len(wheels) == 1, log
    return wheels[0], log


def test_wheel_ships_the_engine_sources_extension_and_marker_but_no_generated_files(built: tuple[Path, str]) -> None:
    wheel, _ = built
    names = zipfile.ZipFile(wheel).namelist()
    engine = [n for n in names if n.startswith("dynapipeline/_engine/")]
    assert any(n.startswith("dynapipeline/_engine/core_c.") and n.endswith((".so", ".pyd")) for n in engine), names
    assert any(n.startswith("dynapipeline/_transports/_remote/copy_c.") and n.endswith((".so", ".pyd"))
               for n in names), names  # the shared-memory copy, built beside the engine
    assert any(n.startswith("dynapipeline/_transports/process/itemlog_c.") and n.endswith((".so", ".pyd"))
               for n in names), names  # the workers' item loop, likewise
    for required in ("dynapipeline/_engine/core_py.py", "dynapipeline/_engine/core_c.pxd", "dynapipeline/py.typed",
                     "dynapipeline/__init__.py", "dynapipeline/__main__.py"):
        assert required in names
    assert not [n for n in names if n.endswith(".c")], names
    assert "dynapipeline/_engine/core_c.py" not in names
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/", "examples/"))], names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), names


def test_wheel_metadata_carries_the_pyproject_version_and_spdx_license(built: tuple[Path, str]) -> None:
    wheel, _ = built
    with zipfile.ZipFile(wheel) as archive:
        metadata_name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = archive.read(metadata_name).decode()
    assert f"Version: {VERSION}" in metadata.splitlines()
    assert "License-Expression: MIT" in metadata.splitlines()
    assert "Classifier: Typing :: Typed" in metadata.splitlines()


def test_building_the_wheel_prints_no_deprecation_warning(built: tuple[Path, str]) -> None:
    _, log = built
    assert "deprecat" not in log.lower(), log


def test_wheel_installed_in_a_fresh_venv_imports_the_compiled_engine(built: tuple[Path, str],
                                                                    tmp_path: Path) -> None:
    wheel, _ = built
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
                   check=True, capture_output=True, env=_clean_env(), timeout=300)
    # The dependencies (pydantic, cloudpickle, uvloop) come from the test environment's site-packages,
    # added as a plain path entry: its .pth files (this checkout's editable install among them) are not run.
    site = next((venv / "lib").glob("python3*/site-packages"))
    deps = [p for p in sys.path if p.endswith("site-packages") and Path(p, "pydantic").is_dir()]
    (site / "test-deps.pth").write_text("\n".join(deps) + "\n")
    code = ("import dynapipeline, dynapipeline._engine as e, dynapipeline._transports._remote.copying as c; "
            "import dynapipeline._transports.process.itemlog as i; "
            "print(dynapipeline.compiled, dynapipeline.__version__, e._core.__name__, c.STREAMS, i.COMPILED_LOG, "
            "dynapipeline.__file__)")
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True,
                         cwd=tmp_path, env=_clean_env(), timeout=120).stdout.split()
    compiled, version, core, streams, item_loop, where = out
    assert (compiled, version, core, streams, item_loop) == ("True", VERSION, "dynapipeline._engine.core_c", "True",
                                                             "True")
    assert Path(where).is_relative_to(venv)
    script = subprocess.run([str(venv / "bin" / "dynapipeline"), "--version"], capture_output=True, text=True,
                            check=True, cwd=tmp_path, env=_clean_env(), timeout=120).stdout
    assert script.strip() == f"dynapipeline {VERSION}"
