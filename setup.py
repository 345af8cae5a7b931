"""Build script for raftlib's compiled hot path (``raftlib._core``).

Project metadata lives in pyproject.toml; this file only declares the Cython
extension.  ``pip install .`` (or ``python setup.py build_ext --inplace`` for a
development tree) compiles ``raftlib/_core.pyx``.  When the extension is not
built, ``raftlib._accel`` falls back to the pure-Python ``raftlib._pycore``.
"""

import sys

from Cython.Build import cythonize
from setuptools import Extension, setup

extra_compile_args = [] if sys.platform == "win32" else ["-O2"]

extensions = [
    Extension(
        "raftlib._core",
        ["raftlib/_core.pyx"],
        extra_compile_args=extra_compile_args,
    )
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives={
            "language_level": 3,
            # Safe: every index into a C array or list is range-checked by hand first.
            "boundscheck": False,
            "wraparound": False,
            "initializedcheck": False,
            "cdivision": True,
            "embedsignature": True,
        },
    ),
)
