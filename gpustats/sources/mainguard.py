"""Whether starting decode workers as fresh processes would re-run the user's script.

Decode workers are forked where that is safe (:func:`gpustats.sources.reduce_tasks._start_method`). Where
they must start as fresh processes (``spawn``: numba's GNU OpenMP threads already run here, or a
platform without ``fork``), each one first imports the main script again, as ``__mp_main__``. A
script that calls gpustats at its top level, outside ``if __name__ == "__main__":``, then runs its
own body in every worker, and those calls start workers of their own: the run dies with a
misleading message. :func:`check_main_guard` finds that case before any worker starts and says
what to do, in one line.

>>> _guarded_lines("x = 1\\nif __name__ == '__main__':\\n    run()\\n")
[(2, 3)]
"""

from __future__ import annotations

import ast
import sys

__all__ = ["UnguardedMain", "check_main_guard"]


class UnguardedMain(RuntimeError):
    """A script's top level would start worker processes that re-run the script."""


def _is_main_test(test: ast.expr) -> bool:
    """``__name__ == "__main__"`` (either side)."""
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq)):
        return False
    sides = [test.left, test.comparators[0]]
    names = [s for s in sides if isinstance(s, ast.Name) and s.id == "__name__"]
    consts = [s for s in sides if isinstance(s, ast.Constant) and s.value == "__main__"]
    return len(names) == 1 and len(consts) == 1


def _guarded_lines(source: str) -> list[tuple[int, int]]:
    """Line ranges of the top-level ``if __name__ == "__main__":`` blocks of ``source``."""
    tree = ast.parse(source)
    return [(node.lineno, node.end_lineno or node.lineno) for node in tree.body
            if isinstance(node, ast.If) and _is_main_test(node.test)]


def _main_line() -> tuple[str, int] | None:
    """``(script path, line)`` where the main script's top level is running now, or None when this
    call does not come from a main script's top level (a function, ``-c``, an interactive session)."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if main is None or not path or not str(path).endswith(".py"):
        return None
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "<module>" and frame.f_globals is vars(main):
            return str(path), frame.f_lineno
        frame = frame.f_back
    return None


def check_main_guard(method: str | None) -> None:
    """Raise :class:`UnguardedMain` when workers started with ``method`` would re-run the main script
    (``spawn`` or ``forkserver``) and this call comes from its top level outside the guard."""
    if method not in ("spawn", "forkserver"):
        return
    where = _main_line()
    if where is None:
        return
    path, line = where
    try:
        with open(path, encoding="utf-8") as fh:
            guarded = _guarded_lines(fh.read())
    except (OSError, SyntaxError, ValueError):
        return  # the script cannot be read: nothing to say for sure
    if any(first <= line <= last for first, last in guarded):
        return
    raise UnguardedMain(
        f"{path} line {line} starts decode worker processes from the script's top level, and new worker "
        f"processes ({method}) re-run the script: put its code under `if __name__ == \"__main__\":` (or pass "
        "workers=0)")
