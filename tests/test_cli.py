"""The ``aioqueue-worker`` command line: flags and variables derived from the settings."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from aioqueue.cli import main, parse_args
from aioqueue.worker.settings import OPTIONS
from tests.conftest import ROOT

SCRIPT = Path(sys.executable).with_name("aioqueue-worker")


def _env(**extra: str) -> dict[str, str]:
    """The test's environment without any AIOQUEUE_ variable of the caller's, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIOQUEUE_")}
    return {**env, **extra}


def _run(*args: str, script: bool = False, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m aioqueue`` (or the installed ``aioqueue-worker`` script)."""
    head = [str(SCRIPT)] if script else [sys.executable, "-m", "aioqueue"]
    return subprocess.run(
        [*head, *args], capture_output=True, text=True, timeout=30, cwd=ROOT, env=_env(**env)
    )


def _refused(capsys: pytest.CaptureFixture[str], argv: list[str], **env: str) -> str:
    """The one line parse_args prints before it exits with code 2."""
    with pytest.raises(SystemExit) as caught:
        parse_args(argv, env)
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err.rstrip("\n")


def test_help_shows_every_flag_its_default_and_its_variable() -> None:
    """--help lists each option with its default and the AIOQUEUE_ variable it reads."""
    out = _run("--help")
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())  # argparse wraps lines
    for s in OPTIONS:
        assert s.flag in text
        assert f"(default: {s.default}; env {s.env})" in text, s.name
    assert "--no-burst" in text and "--version" in text
    assert "--handle-signals" not in text


def test_version() -> None:
    """--version prints the installed package's version."""
    out = _run("--version", script=SCRIPT.exists())
    assert out.returncode == 0
    assert out.stdout.strip() == f"aioqueue-worker {version('aioqueue')}"


def test_defaults_when_nothing_is_given() -> None:
    """With no flags and no variables, the settings are WorkerSettings' defaults."""
    args = parse_args(["tasks:queue"], {})
    assert args.spec == "tasks:queue"
    assert (args.redis_url, args.log_level) == (None, "info")
    assert args.settings == type(args.settings)()


def test_variables_apply_and_flags_beat_them() -> None:
    """AIOQUEUE_ variables set the options; a flag on the command line wins over its variable."""
    env = {
        "AIOQUEUE_PROCESSES": "3",
        "AIOQUEUE_LEASE": "8",
        "AIOQUEUE_BURST": "true",
        "AIOQUEUE_REDIS_URL": "redis://env:1/0",
        "AIOQUEUE_LOG_LEVEL": "WARNING",
        "AIOQUEUE_MAX_TASKS_PER_CHILD": "50",
        "AIOQUEUE_MAX_START_FAILURES": "5",
        "AIOQUEUE_HEARTBEAT": "",  # empty: unset
    }
    args = parse_args(["m:q"], env)
    s = args.settings
    assert (s.processes, s.lease, s.burst, s.heartbeat) == (3, 8.0, True, 1.0)
    assert (s.max_tasks_per_child, s.max_start_failures) == (50, 5)
    assert (args.redis_url, args.log_level) == ("redis://env:1/0", "warning")

    argv = ["m:q", "--processes", "1", "--lease", "2", "--no-burst", "--redis-url", "redis://f"]
    args = parse_args([*argv, "--log-level", "debug"], env)
    s = args.settings
    assert (s.processes, s.lease, s.burst, s.max_start_failures) == (1, 2.0, False, 5)
    assert (args.redis_url, args.log_level) == ("redis://f", "debug")


def test_boolean_variables() -> None:
    """AIOQUEUE_BURST takes true/false/1/0; --burst beats AIOQUEUE_BURST=0."""
    for text, burst in [("1", True), ("True", True), ("0", False), ("false", False)]:
        assert parse_args(["m:q"], {"AIOQUEUE_BURST": text}).settings.burst is burst
    assert parse_args(["m:q", "--burst"], {"AIOQUEUE_BURST": "0"}).settings.burst is True


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--lease", "-1"], {}, "lease must be > 0 seconds, got -1 (from --lease)"),
        (
            ["--lease", "1", "--heartbeat", "2"],
            {},
            "lease must be longer than heartbeat (2 s), got 1",
        ),
        (
            [],
            {"AIOQUEUE_LEASE": "1", "AIOQUEUE_HEARTBEAT": "2"},
            "lease must be longer than heartbeat (2 s), got 1",
        ),
        (["--processes", "0"], {}, "processes must be an integer >= 1, got 0 (from --processes)"),
        (
            ["--processes", "two"],
            {},
            "processes must be an integer >= 1, got 'two' (from --processes)",
        ),
        (
            [],
            {"AIOQUEUE_PROCESSES": "abc"},
            "processes must be an integer >= 1, got 'abc' (from AIOQUEUE_PROCESSES)",
        ),
        (
            [],
            {"AIOQUEUE_BURST": "maybe"},
            "burst must be true or false, got 'maybe' (from AIOQUEUE_BURST)",
        ),
        (
            [],
            {"AIOQUEUE_BLOCK_TIMEOUT": "600"},
            "block_timeout must be > 0 and <= 60 seconds, got 600 (from AIOQUEUE_BLOCK_TIMEOUT)",
        ),
        (
            ["--log-level", "loud"],
            {},
            "log_level must be one of debug, info, warning, error, got 'loud' (from --log-level)",
        ),
        (
            [],
            {"AIOQUEUE_MAX_START_FAILURES": "0"},
            "max_start_failures must be an integer >= 1, got 0 (from AIOQUEUE_MAX_START_FAILURES)",
        ),
        (["--grace", "nan"], {}, "grace must be >= 0 seconds, got nan (from --grace)"),
        (["--no-such-flag"], {}, "unrecognized arguments: --no-such-flag"),
        (["--max-tasks", "5"], {}, "unrecognized arguments: --max-tasks 5"),
    ],
)
def test_bad_values_are_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], env: dict[str, str], message: str
) -> None:
    """Each bad value, from a flag or a variable, is one line naming where it came from."""
    assert _refused(capsys, ["m:q", *argv], **env) == f"aioqueue-worker: {message}"


def test_missing_spec_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """Without MODULE:ATTR the worker says so in one line, without the usage block."""
    assert _refused(capsys, []) == (
        "aioqueue-worker: name the Queue to serve: MODULE:ATTR, or AIOQUEUE_TASKS"
    )


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--lease", "-1"], {}, "lease must be > 0 seconds, got -1 (from --lease)"),
        ([], {"AIOQUEUE_PROCESSES": "abc"}, "got 'abc' (from AIOQUEUE_PROCESSES)"),
    ],
)
def test_the_real_command_refuses_bad_values(
    args: list[str], env: dict[str, str], message: str
) -> None:
    """The installed command prints one line and exits 2, before importing the queue's module."""
    out = _run("tests.tasks:queue", *args, script=SCRIPT.exists(), **env)
    assert out.returncode == 2
    assert out.stderr.startswith("aioqueue-worker: ") and out.stderr.count("\n") == 1
    assert message in out.stderr and "Traceback" not in out.stderr


def test_unimportable_module_is_a_clear_error() -> None:
    """A MODULE:ATTR that does not import exits non-zero with the import error in one line."""
    out = _run("tests.no_such_module:queue")
    assert out.returncode == 1
    assert out.stderr == "aioqueue-worker: No module named 'tests.no_such_module'\n"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("tests.tasks:nothing", "nothing"),
        ("tests.tasks:Point", "not an aioqueue.Queue"),
        ("no_colon", "expected MODULE:ATTR"),
    ],
)
def test_bad_spec_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, spec: str, message: str
) -> None:
    """A MODULE:ATTR that names no Queue exits non-zero with a message saying what is wrong."""
    for name in [k for k in os.environ if k.startswith("AIOQUEUE_")]:
        monkeypatch.delenv(name)
    with pytest.raises(SystemExit) as caught:
        main([spec, "--redis-url", "redis://127.0.0.1:1/0"])
    assert isinstance(caught.value.code, str)
    assert caught.value.code.startswith("aioqueue-worker: ") and message in caught.value.code


def test_the_queue_to_serve_may_come_from_the_environment(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """MODULE:ATTR from AIOQUEUE_TASKS when not on the command line (a container's image sets
    the command, its deployment the variables); the argument wins; neither is one clear line."""
    assert parse_args([], {"AIOQUEUE_TASKS": "m:q"}).spec == "m:q"
    assert parse_args(["a:b"], {"AIOQUEUE_TASKS": "m:q"}).spec == "a:b"


def test_worker_reads_the_environment(redis_url: str) -> None:
    """A burst worker configured only by variables finds its Redis there and exits 0 when idle."""
    out = _run(
        AIOQUEUE_TASKS="tests.tasks:queue",
        AIOQUEUE_REDIS_URL=redis_url,
        AIOQUEUE_BURST="1",
        AIOQUEUE_PROCESSES="1",
        AIOQUEUE_LOG_LEVEL="info",
    )
    assert out.returncode == 0, out.stderr
    assert "burst: queue empty, stopping" in out.stderr


def test_aioqueue_worker_is_aioqueue_hyphen_worker() -> None:
    """``aioqueue worker ...`` runs the same command as ``aioqueue-worker ...``."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "aioqueue.admin", "worker", "--version"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0
    assert out.stdout.strip() == f"aioqueue-worker {version('aioqueue')}"
    bad = subprocess.run(
        [sys.executable, "-m", "aioqueue.admin", "worker", "--lease", "-1", "tasks:queue"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert bad.returncode == 2 and "lease must be > 0 seconds" in bad.stderr
