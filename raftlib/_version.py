"""The single source of raftlib's version.

pyproject.toml reads it (``[tool.setuptools.dynamic]``, parsed statically, without
importing raftlib) for the package metadata, and ``raftlib.__version__`` re-exports
it, so the two always agree, in an editable install too.
"""

__version__ = "0.1.0.dev0"
