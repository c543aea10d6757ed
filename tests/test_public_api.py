"""The public surface: ``__all__`` lists exactly what exists, and the package is typed."""

from __future__ import annotations

import ast
import importlib
from inspect import ismodule
from pathlib import Path

import pytest

MODULES = [
    "aioqueue",
    "aioqueue.errors",
    "aioqueue.info",
    "aioqueue.job",
    "aioqueue.options",
    "aioqueue.queue",
    "aioqueue.results",
    "aioqueue.sync",
    "aioqueue.testing",
    "aioqueue.worker",
]


@pytest.mark.parametrize("name", MODULES)
def test_all_names_exist(name: str) -> None:
    """Every name in ``__all__`` exists in the module."""
    module = importlib.import_module(name)
    missing = [n for n in module.__all__ if not hasattr(module, n)]
    assert missing == []


def test_public_names_are_exported() -> None:
    """Every public class and function of the package root is in ``__all__``."""
    import aioqueue

    public = {n for n, v in vars(aioqueue).items() if not n.startswith("_") and not ismodule(v)}
    assert public - {"annotations"} == set(aioqueue.__all__)


def test_public_names_come_from_their_own_modules() -> None:
    """Each concept lives in its own module, and the package root re-exports it."""
    import aioqueue

    homes = {
        "Queue": "aioqueue.queue",
        "Job": "aioqueue.job",
        "Options": "aioqueue.options",
        "Call": "aioqueue.options",
        "Submitter": "aioqueue.options",
        "QueueInfo": "aioqueue.info",
        "DeadLetter": "aioqueue.info",
        "SyncQueue": "aioqueue.sync",
        "SyncJob": "aioqueue.sync",
        "SyncSubmitter": "aioqueue.sync",
        "BlockingCallInLoop": "aioqueue.errors",
    }
    for name, module in homes.items():
        assert getattr(aioqueue, name).__module__ == module, name
        assert getattr(importlib.import_module(module), name) is getattr(aioqueue, name)


PACKAGE = Path(__file__).resolve().parents[1] / "aioqueue"


@pytest.mark.parametrize(
    "path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE))
)
def test_modules_stay_small_and_say_what_they_are(path: Path) -> None:
    """Every module opens with a docstring whose first line says what it is, and stays around
    500 lines or fewer."""
    text = path.read_text()
    module = ast.parse(text)
    doc = (ast.get_docstring(module) or "").strip()
    assert doc and doc.splitlines()[0].strip()
    assert len(text.splitlines()) <= 530


def test_options_returns_a_public_type() -> None:
    """queue.options(...) returns the public Submitter."""
    import aioqueue

    submitter = aioqueue.Queue("q").options(delay=1.0)
    assert type(submitter) is aioqueue.Submitter
    assert submitter.options == aioqueue.Options(delay=1.0)


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
