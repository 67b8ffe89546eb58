"""The runnable examples in every module's docstrings stay true.

Every module of the package is collected (new modules are picked up without editing this file),
except the CUDA kernels (``gpustats.kernels.*``), whose examples need a GPU or the numba simulator:
tests/sim_kernels_cases.py runs those under the simulator.
"""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import pkgutil
from pathlib import Path

import pytest

import gpustats

MODULES = sorted(
    info.name for info in pkgutil.walk_packages(gpustats.__path__, prefix="gpustats.")
    if not info.name.startswith("gpustats.kernels") and not info.name.endswith("__main__")
)


def _has_examples(name: str) -> bool:
    """Whether the module's source holds a docstring example (read, not imported, at collection)."""
    spec = importlib.util.find_spec(name)
    return ">>> " in Path(spec.origin).read_text()


#: only the modules with examples: a doctest run on a module without any would pass without testing
WITH_EXAMPLES = [name for name in MODULES if _has_examples(name)]


def test_every_module_is_collected():
    assert {"gpustats.numerics", "gpustats.sampling", "gpustats.sample_design"} <= set(WITH_EXAMPLES)
    for name in ("gpustats.api", "gpustats.cli", "gpustats.report", "gpustats.benchmark", "gpustats.sources.engine",
                 "gpustats.sources.reduce_tasks", "gpustats.options", "gpustats.intervals"):
        assert name in MODULES


@pytest.mark.parametrize("name", WITH_EXAMPLES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{name} shows '>>> ' but doctest found no example in its docstrings"
    assert result.failed == 0, f"{result.failed} of {result.attempted} docstring examples in {name} failed"
