"""The public surface: ``__all__`` lists exactly what exists, and the package is typed."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

MODULES = ["aioqueue", "aioqueue.errors", "aioqueue.testing", "aioqueue.worker"]


@pytest.mark.parametrize("name", MODULES)
def test_all_names_exist(name: str) -> None:
    """Every name in ``__all__`` exists in the module."""
    module = importlib.import_module(name)
    missing = [n for n in module.__all__ if not hasattr(module, n)]
    assert missing == []


def test_public_names_are_exported() -> None:
    """Every public class and function of the package root is in ``__all__``."""
    import aioqueue

    public = {n for n in vars(aioqueue) if not n.startswith("_")}
    modules = {"errors", "queue", "keys", "wire", "task", "scripts", "testing", "worker"}
    assert public - modules - {"annotations"} == set(aioqueue.__all__)


def test_errors_share_one_root() -> None:
    """Every exception aioqueue defines derives from AioqueueError and says when it is raised."""
    import aioqueue.errors as errors

    for name in errors.__all__:
        cls = getattr(errors, name)
        assert issubclass(cls, errors.AioqueueError)
        assert (cls.__doc__ or "").startswith("Raised when")


def test_package_ships_py_typed() -> None:
    """The package carries a py.typed marker."""
    import aioqueue

    assert (Path(aioqueue.__file__).parent / "py.typed").exists()
