"""Builds the Cython engine; falls back to pure Python (with a warning) when that is impossible.

The engine has one source, ``dynapipeline/engine/core_py.py``. It is compiled a second time
under the module name ``dynapipeline.engine.core_c``; Cython finds a module's ``.pxd`` by the
module's name, so ``core_c.pxd`` beside the source gives the compiled module its C types.

DYNAPIPELINE_REQUIRE_EXTENSIONS=1 turns the fallback into a build error.
"""

import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

REQUIRE = os.environ.get("DYNAPIPELINE_REQUIRE_EXTENSIONS", "") not in ("", "0")


def extensions():
    try:
        from Cython.Build import cythonize
    except ImportError:
        if REQUIRE:
            raise
        print("WARNING: Cython missing, dynapipeline is installed as pure Python", file=sys.stderr)
        return []
    engine = Extension("dynapipeline.engine.core_c", ["dynapipeline/engine/core_py.py"])
    return cythonize(
        [engine],
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
        print(f"WARNING: building the dynapipeline engine failed ({error}); using pure Python",
              file=sys.stderr)


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
