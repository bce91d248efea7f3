"""The native build: fastlm._C always, fastlm._cuda whenever a CUDA compiler was there to build it."""

import os
import shutil

import pytest

import fastlm


def test_native_module_version_matches_package():
    from fastlm import _C

    assert _C.__version__ == fastlm.__version__


@pytest.mark.skipif(
    shutil.which("nvcc") is None or os.environ.get("FASTLM_CUDA") == "0",
    reason="no CUDA compiler on this machine (or FASTLM_CUDA=0): fastlm._cuda is not built",
)
def test_cuda_module_is_built_when_nvcc_is_present():
    # Importing needs no GPU: the module only touches the driver when a kernel is launched.
    from fastlm import _cuda

    assert _cuda.__doc__


def _declared_scripts() -> dict:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    root = os.path.join(os.path.dirname(__file__), os.pardir)
    with open(os.path.join(root, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)["project"]["scripts"]


def test_console_scripts_are_declared_and_resolve():
    import importlib

    scripts = _declared_scripts()
    assert scripts["fastlm"] == "fastlm.cli.main:main" and scripts["fastlm-train"] == "fastlm.cli.train:main"
    for target in scripts.values():
        module, func = target.split(":")
        assert callable(getattr(importlib.import_module(module), func))


def test_installed_entry_points_match_pyproject():
    # Only meaningful where the fastlm being tested is the installed one (CI: pip install ".[...]").
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        dist = distribution("fastlm")
    except PackageNotFoundError:
        pytest.skip("fastlm is not installed (PYTHONPATH run)")
    if os.path.realpath(str(dist.locate_file("fastlm"))) != os.path.realpath(os.path.dirname(fastlm.__file__)):
        pytest.skip("the installed fastlm is not the one under test")
    installed = {e.name: e.value for e in dist.entry_points if e.group == "console_scripts"}
    assert installed == _declared_scripts()
