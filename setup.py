"""Build script for raftlib's optional compiled hot path (``raftlib._core``).

Project metadata (and the version, read from ``raftlib/_version.py``) lives in
pyproject.toml; this file only declares the Cython extension and makes it
**optional**, following aiohttp's pattern:

* Cython installed: ``raftlib/_core.pyx`` is cythonized and compiled.
* Cython missing: the generated ``raftlib/_core.c`` is compiled if it is
  present (an sdist or a tree where Cython ran before), otherwise there is
  nothing to compile.
* No C compiler, or the compilation fails: the build goes on without the
  extension.

Whenever the extension is not built, exactly one warning saying so (and why)
is printed, and the package installs with the pure-Python core
(``raftlib._pycore``; ``raftlib.COMPILED`` is then False). ``RAFTLIB_NO_EXTENSIONS=1``
skips the extension on purpose; ``RAFTLIB_REQUIRE_EXTENSIONS=1`` makes any failure
to build it fatal instead (development builds that must be compiled). pip shows a
build's output only with ``-v``.

Cython is never imported at module level, so this file runs without it.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
PYX = os.path.join("raftlib", "_core.pyx")
C_SOURCE = os.path.join("raftlib", "_core.c")

COMPILER_DIRECTIVES = {
    "language_level": 3,
    # Safe: every index into a C array or list is range-checked by hand first.
    "boundscheck": False,
    "wraparound": False,
    "initializedcheck": False,
    "cdivision": True,
    "embedsignature": True,
}

_warned = False
_pure_reason: str | None = None
"""Why no extension is declared; warned about when the package is built, not when metadata is
prepared (pip runs this file once for each, so warning at load time would warn twice)."""


def warn_pure(reason: str) -> None:
    """Print the one warning that the pure-Python core is being installed (or fail, if required)."""
    global _warned
    if os.environ.get("RAFTLIB_REQUIRE_EXTENSIONS") == "1":
        raise SystemExit(f"error: RAFTLIB_REQUIRE_EXTENSIONS=1 but raftlib._core cannot be built: {reason}")
    if _warned:
        return
    _warned = True
    bar = "*" * 78
    sys.stderr.write(
        f"\n{bar}\n"
        "WARNING: raftlib's compiled hot path (raftlib._core) is not built:\n"
        f"  {reason}\n"
        "Installing the pure-Python core instead (raftlib.COMPILED is False): it is\n"
        "correct and complete, only slower. To get the compiled core, install a C\n"
        "compiler and the Python headers (and Cython), then reinstall raftlib.\n"
        f"{bar}\n\n"
    )
    sys.stderr.flush()


class warning_build_py(build_py):
    """``build_py`` that prints the pure-core warning when no extension was declared."""

    def run(self) -> None:
        super().run()
        if _pure_reason is not None:
            warn_pure(_pure_reason)


class optional_build_ext(build_ext):
    """``build_ext`` that turns a failed compilation into the pure-core warning."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # no compiler at all (DistutilsPlatformError), a broken toolchain
            self._give_up(exc)

    def build_extension(self, ext: Any) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:  # CompileError, LinkError, an exec failure of the compiler
            self._give_up(exc)

    def _give_up(self, exc: BaseException) -> None:
        detail = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        warn_pure(f"building the C extension failed ({type(exc).__name__}: {detail})")
        # Nothing half-built may be installed: the package then imports raftlib._pycore.
        self.extensions = []


def extensions() -> list[Extension]:
    """The extension to build, from the .pyx (Cython) or the shipped .c; [] when neither works."""
    global _pure_reason
    if os.environ.get("RAFTLIB_NO_EXTENSIONS") == "1":
        _pure_reason = "RAFTLIB_NO_EXTENSIONS=1 is set"
        return []
    extra_compile_args = [] if sys.platform == "win32" else ["-O2"]
    try:
        from Cython.Build import cythonize
    except ImportError:
        if os.path.exists(os.path.join(HERE, C_SOURCE)):
            return [Extension("raftlib._core", [C_SOURCE], extra_compile_args=extra_compile_args)]
        _pure_reason = "Cython is not installed and there is no generated raftlib/_core.c to compile"
        return []
    ext = Extension("raftlib._core", [PYX], extra_compile_args=extra_compile_args)
    try:
        return list(cythonize([ext], compiler_directives=COMPILER_DIRECTIVES))
    except Exception as exc:  # a Cython too old for the source, say
        _pure_reason = f"Cython could not translate {PYX} ({type(exc).__name__}: {exc})"
        return []


setup(
    ext_modules=extensions(),
    cmdclass={"build_ext": optional_build_ext, "build_py": warning_build_py},
)
