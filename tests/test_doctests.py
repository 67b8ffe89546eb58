"""The runnable examples in the package's docstrings stay true."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "gpustats.api", "gpustats.stats", "gpustats.batches", "gpustats.transforms", "gpustats.checkpoint",
    "gpustats.sampling", "gpustats.sources.dataset", "gpustats.sources.decode", "gpustats.sources.listing",
    "gpustats.sources.synthetic", "gpustats.backends.cpu", "gpustats.distributed", "gpustats.plot",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} of {result.attempted} docstring examples in {name} failed"
