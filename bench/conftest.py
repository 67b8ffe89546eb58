"""pytest configuration for the benchmark suites in bench/ (not part of the normal test run).

* Files named ``bench_*.py`` here are collected (the project's ``python_files`` is ``test_*.py``
  and ``testpaths`` is ``tests/``, so a plain ``pytest`` never runs them).
* Benchmarks only time when asked: without ``--benchmark-enable`` each benchmark body runs once,
  untimed (pytest-benchmark's ``--benchmark-disable``), which is the smoke mode.
* GPU suites carry ``pytest.mark.gpu`` and skip with a reason where there is no real GPU.
"""

from __future__ import annotations

import pytest


def pytest_collect_file(file_path, parent):
    if file_path.suffix == ".py" and file_path.name.startswith("bench_") and not parent.session.isinitpath(file_path):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def pytest_configure(config):
    if not config.getoption("benchmark_enable", default=False):
        config.option.benchmark_disable = True


@pytest.fixture(scope="session")
def device_data():
    from benchlib import DeviceData

    return DeviceData()


@pytest.fixture(scope="session")
def measured():
    """Medians measured earlier in this session, for ratios (e.g. vs the forum recipe)."""
    return {}


def pytest_benchmark_update_machine_info(config, machine_info):
    """--benchmark-json files carry what gpustats bench records: GPU name, driver, versions, commit."""
    import torch

    from gpustats.benchmark import machine_info as gpustats_machine_info

    machine_info["gpustats"] = gpustats_machine_info("cuda" if torch.cuda.is_available() else "cpu")
