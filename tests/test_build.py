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


def test_train_entry_point_does_not_exist_yet():
    # fastlm-train lands with pretraining; until then there is no placeholder pretending to train.
    from importlib.metadata import PackageNotFoundError, entry_points

    try:
        names = {e.name for e in entry_points(group="console_scripts") if e.value.startswith("fastlm.")}
    except PackageNotFoundError:  # pragma: no cover
        names = set()
    assert "fastlm-train" not in names
