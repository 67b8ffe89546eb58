"""The runnable examples in every module's docstrings stay true.

Every module of the package is collected (new modules are picked up without editing this file),
except the CUDA kernels (``gpustats.kernels.*``), whose examples need a GPU or the numba simulator:
tests/sim_kernels_cases.py runs those under the simulator.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import gpustats

MODULES = sorted(
    info.name for info in pkgutil.walk_packages(gpustats.__path__, prefix="gpustats.")
    if not info.name.startswith("gpustats.kernels") and not info.name.endswith("__main__")
)


def test_every_module_is_collected():
    for name in ("gpustats.api", "gpustats.cli", "gpustats.report", "gpustats.benchmark", "gpustats.sources.engine",
                 "gpustats.sources.mapside", "gpustats.options", "gpustats.intervals"):
        assert name in MODULES


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} of {result.attempted} docstring examples in {name} failed"
