"""Builds the Cython engine and the large-buffer copy; falls back to pure Python (with a warning) when impossible.

The engine has one source, ``dynapipeline/_engine/core_py.py``. It is compiled a second time
under the module name ``dynapipeline._engine.core_c``; Cython finds a module's ``.pxd`` by the
module's name, so ``core_c.pxd`` beside the source gives the compiled module its C types.

``dynapipeline/_transports/_remote/copy_c.pyx`` is the compiled side of ``copying.py`` (a copy
with non-temporal stores, which pure Python cannot express); ``copying.py`` copies without it.
``dynapipeline/_transports/process/itemlog_c.pyx`` is the compiled side of ``itemlog.py`` (a worker's
loop over a chunk's items, with C clock reads and stores); ``itemlog.py`` runs without it.

DYNAPIPELINE_REQUIRE_EXTENSIONS=1 turns the fallback into a build error.
"""

import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

REQUIRE = os.environ.get("DYNAPIPELINE_REQUIRE_EXTENSIONS", "") not in ("", "0")
SOURCE = "dynapipeline/_engine/core_py.py"
COPY = "dynapipeline/_transports/_remote/copy_c.pyx"
ITEMLOG = "dynapipeline/_transports/process/itemlog_c.pyx"
PXD = "dynapipeline/_engine/core_c.pxd"
GENERATED_C = "dynapipeline/_engine/core_py.c"  # cythonize names it after the source


def _pxd_newer_than_generated_c():
    """Cython decides whether to regenerate the C from the source's own-named .pxd (core_py.pxd),
    not from the one it finds by module name, so a changed core_c.pxd must force it."""
    return os.path.exists(GENERATED_C) and os.path.getmtime(PXD) > os.path.getmtime(GENERATED_C)


def extensions():
    try:
        from Cython.Build import cythonize
    except ImportError:
        if REQUIRE:
            raise
        print("WARNING: Cython missing, dynapipeline is installed as pure Python", file=sys.stderr)
        return []
    engine = Extension("dynapipeline._engine.core_c", [SOURCE], depends=[PXD])
    copy = Extension("dynapipeline._transports._remote.copy_c", [COPY])
    itemlog = Extension("dynapipeline._transports.process.itemlog_c", [ITEMLOG])
    return cythonize(
        [engine, copy, itemlog],
        force=_pxd_newer_than_generated_c(),
        compiler_directives={
            "language_level": 3,
            "annotation_typing": False,
            "boundscheck": False,
            "wraparound": False,
            "embedsignature": True,
        },
    )


class OptionalBuildExt(build_ext):
    """Turns a compiler failure into a warning unless extensions are required."""

    def run(self):
        try:
            super().run()
        except Exception as error:  # no compiler, missing headers, ...
            self._fallback(error)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as error:
            self._fallback(error)

    def _fallback(self, error):
        if REQUIRE:
            raise
        print(f"WARNING: building a dynapipeline extension failed ({error}); using pure Python",
              file=sys.stderr)


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
