"""Packaging: raftlib installs without a C compiler or Cython, and its version has one source.

Rules checked (docs/packaging.md):

* the package version (metadata) and ``raftlib.__version__`` agree, both read from
  ``raftlib/_version.py``;
* ``pip wheel .`` on a machine without a C compiler builds a wheel holding the
  pure-Python core, printing exactly one warning that says so; installed into a
  fresh virtualenv, ``import raftlib`` works with ``COMPILED`` False;
* without Cython (and no generated ``_core.c``) the same happens, and setup.py
  does not need Cython to run at all;
* without Cython but with a generated ``_core.c`` the extension is compiled
  from it (slow: a real C compilation).

The builds run offline (``--no-build-isolation`` with this virtualenv's
setuptools) from a copy of the source tree, so the worktree is never touched.
"""

from __future__ import annotations

import ast
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

import raftlib

ROOT = Path(__file__).resolve().parent.parent
WARNING = "WARNING: raftlib's compiled hot path (raftlib._core) is not built"
SKIP_NAMES = {".venv", ".git", "build", "dist", "tests", "docs", "examples", "benchmarks", "scripts", ".ci"}


def _version_in_source() -> str:
    tree = ast.parse((ROOT / "raftlib" / "_version.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "__version__":
            assert isinstance(node.value, ast.Constant)
            return str(node.value.value)
    raise AssertionError("raftlib/_version.py does not assign __version__")


def test_version_has_one_source_and_the_metadata_agrees():
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^dynamic = \["version"\]', pyproject, re.M), "the version must not be static"
    assert 'version = { attr = "raftlib._version.__version__" }' in pyproject
    assert raftlib.__version__ == _version_in_source()
    assert importlib.metadata.version("raftlib") == raftlib.__version__


def test_version_is_pep440():
    # The public part of PEP 440's canonical form (no local version on a release).
    pattern = r"^\d+(\.\d+)*((a|b|rc)\d+)?(\.post\d+)?(\.dev\d+)?$"
    assert re.match(pattern, raftlib.__version__), raftlib.__version__


def test_setup_py_does_not_import_cython_at_module_level():
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in tree.body:  # top-level statements only
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
            assert not any(n.split(".")[0] == "Cython" for n in names), ast.dump(node)


# -- building --------------------------------------------------------------------------------------


def _copy_source(dst: Path, *, keep_c: bool = False) -> Path:
    """A clean copy of the buildable tree: no built extension, no generated C unless asked."""

    def ignore(_d: str, names: list[str]) -> list[str]:
        return [
            n
            for n in names
            if n in SKIP_NAMES
            or n == "__pycache__"
            or n.endswith((".egg-info", ".so", ".pyd", ".html"))
            or (n.endswith(".c") and not keep_c)
        ]

    src = dst / "src"
    shutil.copytree(ROOT, src, ignore=ignore)
    return src


def _no_cython_dir(tmp: Path) -> Path:
    """A directory that, first on PYTHONPATH, makes ``import Cython`` fail as if it were absent."""
    d = tmp / "no-cython"
    (d / "Cython").mkdir(parents=True)
    (d / "Cython" / "__init__.py").write_text("raise ImportError('Cython is hidden by the test')\n")
    return d


def _build_wheel(src: Path, out: Path, env_extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("RAFTLIB_PURE", None)
    env.update(env_extra)
    cmd = [sys.executable, "-m", "pip", "wheel", "-v", "--no-build-isolation", "--no-deps", "-w", str(out)]
    cmd.append(".")
    proc = subprocess.run(cmd, cwd=src, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _install_and_probe(wheel: Path, tmp: Path) -> list[str]:
    """Install ``wheel`` into a fresh virtualenv (offline) and report COMPILED and both versions."""
    target = tmp / "venv"
    venv.create(target, with_pip=False)
    py = target / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", str(py)]
    subprocess.run(
        [*pip, "install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    probe = (
        "import importlib.metadata, raftlib, raftlib._accel as a;"
        "print(raftlib.COMPILED, a.impl.__name__, raftlib.__version__, importlib.metadata.version('raftlib'))"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("RAFTLIB_PURE", "PYTHONPATH")}
    out = subprocess.run([str(py), "-c", probe], cwd=tmp, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def _only_wheel(out: Path) -> Path:
    wheels = list(out.glob("*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_without_a_c_compiler_the_pure_core_is_installed_with_one_warning(tmp_path):
    src = _copy_source(tmp_path)
    proc = _build_wheel(src, tmp_path / "dist", {"CC": "/bin/false", "LDSHARED": "/bin/false"})
    output = proc.stdout + proc.stderr
    assert output.count(WARNING) == 1, output[-3000:]
    assert "building the C extension failed" in output
    wheel = _only_wheel(tmp_path / "dist")
    assert not [n for n in zipfile.ZipFile(wheel).namelist() if n.endswith((".so", ".pyd"))]
    compiled, impl, version, meta_version = _install_and_probe(wheel, tmp_path)
    assert (compiled, impl) == ("False", "raftlib._pycore")
    assert version == meta_version == raftlib.__version__


def test_without_cython_or_generated_c_the_pure_core_is_installed(tmp_path):
    src = _copy_source(tmp_path)
    proc = _build_wheel(src, tmp_path / "dist", {"PYTHONPATH": str(_no_cython_dir(tmp_path))})
    output = proc.stdout + proc.stderr
    assert output.count(WARNING) == 1, output[-3000:]
    assert "Cython is not installed and there is no generated raftlib/_core.c" in output
    wheel = _only_wheel(tmp_path / "dist")
    assert wheel.name.endswith("-py3-none-any.whl"), wheel.name  # nothing compiled: a pure wheel
    compiled, impl, *_ = _install_and_probe(wheel, tmp_path)
    assert (compiled, impl) == ("False", "raftlib._pycore")


def test_raftlib_no_extensions_skips_the_build_on_purpose(tmp_path):
    src = _copy_source(tmp_path)
    proc = _build_wheel(src, tmp_path / "dist", {"RAFTLIB_NO_EXTENSIONS": "1"})
    assert (proc.stdout + proc.stderr).count("RAFTLIB_NO_EXTENSIONS=1 is set") == 1
    assert _only_wheel(tmp_path / "dist").name.endswith("-py3-none-any.whl")


def test_raftlib_require_extensions_makes_a_failed_build_fatal(tmp_path):
    src = _copy_source(tmp_path)
    env = {**os.environ, "CC": "/bin/false", "LDSHARED": "/bin/false", "RAFTLIB_REQUIRE_EXTENSIONS": "1"}
    out = tmp_path / "dist"
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-w", str(out), "."]
    proc = subprocess.run(cmd, cwd=src, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "RAFTLIB_REQUIRE_EXTENSIONS=1 but raftlib._core cannot be built" in proc.stdout + proc.stderr
    assert not list(out.glob("*.whl"))


@pytest.mark.slow
def test_without_cython_the_shipped_c_source_is_compiled(tmp_path):
    src = _copy_source(tmp_path)
    # What an sdist ships: the C file Cython generated (made here with this venv's Cython).
    subprocess.run(
        [sys.executable, "setup.py", "--version"],  # setup.py cythonizes when it is loaded
        cwd=src,
        check=True,
        capture_output=True,
        timeout=300,
    )
    assert (src / "raftlib" / "_core.c").exists()
    shutil.rmtree(src / "build", ignore_errors=True)
    proc = _build_wheel(src, tmp_path / "dist", {"PYTHONPATH": str(_no_cython_dir(tmp_path))})
    assert WARNING not in proc.stdout + proc.stderr
    wheel = _only_wheel(tmp_path / "dist")
    names = zipfile.ZipFile(wheel).namelist()
    assert [n for n in names if n.startswith("raftlib/_core.") and n.endswith(".so")], names
    compiled, impl, *_ = _install_and_probe(wheel, tmp_path)
    assert (compiled, impl) == ("True", "raftlib._core")
