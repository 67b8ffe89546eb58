"""``python tests/_core_only.py ARGS...``: the ``gpustats`` command as on a core install
(``pip install -e .``): the optional and test extras cannot be imported."""

import sys

#: what the extras install (pyproject.toml's optional dependencies), and the test tools
EXTRAS = ("numba_cuda", "numba.cuda", "pyarrow", "matplotlib", "hypothesis", "simplejpeg", "pytest",
          "pytest_benchmark", "nvidia", "torchvision")


class _Blocked:
    def find_spec(self, name, path=None, target=None):
        if any(name == extra or name.startswith(extra + ".") for extra in EXTRAS):
            raise ModuleNotFoundError(f"No module named {name!r} (a core install)", name=name)
        return None


if __name__ == "__main__":
    sys.meta_path.insert(0, _Blocked())
    from gpustats.cli import main

    sys.exit(main(sys.argv[1:]))
