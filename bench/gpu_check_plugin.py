"""pytest plugin of bench/gpu_check.py: one JSON line per test outcome, written as the tests finish.

Loaded with ``-p gpu_check_plugin`` (bench/ on PYTHONPATH) and ``GPUSTATS_GPU_CHECK_REPORT=FILE``.
Written as they come (not at the end like --junitxml) so that a run stopped at its time cap still
says what passed, failed and skipped. Under pytest-xdist only the controller writes.
"""

from __future__ import annotations

import json
import os

import pytest

_PATH = os.environ.get("GPUSTATS_GPU_CHECK_REPORT")


def _write(record: dict) -> None:
    if _PATH:
        with open(_PATH, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")


def _worker() -> bool:
    return bool(os.environ.get("PYTEST_XDIST_WORKER"))


def pytest_collection_finish(session):
    if not _worker() and not session.config.pluginmanager.hasplugin("dsession"):
        _write({"collected": len(session.items)})


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node, ids):
    _write({"collected": len(ids)})


def pytest_runtest_logreport(report):
    if _worker():
        return  # the controller records it
    if report.when == "call" or report.outcome != "passed":
        record = {"nodeid": report.nodeid, "when": report.when, "outcome": report.outcome,
                  "duration": round(report.duration, 3)}
        if report.outcome == "skipped" and isinstance(report.longrepr, tuple):
            record["reason"] = str(report.longrepr[2])[:300]
        elif report.outcome == "failed":
            record["message"] = report.longreprtext[-1500:]
        _write(record)
