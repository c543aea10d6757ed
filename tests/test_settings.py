"""Worker settings: one definition, checked on construction, with the README's table from it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import msgspec
import pytest

from aioqueue.errors import InvalidOptions
from aioqueue.worker import WorkerSettings
from aioqueue.worker.settings import FIELDS, OPTIONS, _cpu_count, markdown_table

README = Path(__file__).resolve().parent.parent / "README.md"
START, END = "<!-- settings-table -->", "<!-- /settings-table -->"


def test_defaults() -> None:
    """The defaults: a child per usable CPU (affinity, container quota), 5 s leases renewed
    every second, 3 start failures allowed."""
    s = WorkerSettings()
    assert s.processes == _cpu_count() <= len(os.sched_getaffinity(0))
    assert (s.prefetch, s.burst, s.heartbeat, s.lease) == (0, False, 1.0, 5.0)
    assert (s.maintenance_interval, s.block_timeout, s.grace) == (1.0, 2.0, 30.0)
    assert (s.max_tasks_per_child, s.retry_backoff, s.retry_backoff_max) == (None, 1.0, 300.0)
    assert (s.kill_grace, s.max_start_failures, s.handle_signals) == (1.0, 3, True)
    assert s.async_concurrency == 10
    s.validate()  # the supervisor checks again; a valid value stays valid


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lease": -1}, "lease must be > 0 seconds, got -1"),
        ({"heartbeat": 0}, "heartbeat must be > 0 seconds, got 0"),
        ({"processes": 0}, "processes must be an integer >= 1, got 0"),
        ({"processes": 2.5}, "processes must be an integer >= 1, got 2.5"),
        ({"prefetch": -1}, "prefetch must be an integer >= 0, got -1"),
        ({"async_concurrency": 0}, "async_concurrency must be an integer >= 1, got 0"),
        (
            {"max_tasks_per_child": 0},
            "max_tasks_per_child must be an integer >= 1 (or None), got 0",
        ),
        ({"max_start_failures": 0}, "max_start_failures must be an integer >= 1, got 0"),
        ({"block_timeout": 61}, "block_timeout must be > 0 and <= 60 seconds, got 61"),
        ({"grace": -0.5}, "grace must be >= 0 seconds, got -0.5"),
        ({"kill_grace": float("nan")}, "kill_grace must be >= 0 seconds, got nan"),
        ({"lease": float("inf")}, "lease must be > 0 seconds, got inf"),
        ({"burst": "yes"}, "burst must be true or false, got 'yes'"),
        ({"lease": 1, "heartbeat": 2}, "lease must be longer than heartbeat (2 s), got 1"),
        ({"lease": 1, "heartbeat": 1}, "lease must be longer than heartbeat (1 s), got 1"),
        (
            {"retry_backoff": 5, "retry_backoff_max": 2},
            "retry_backoff_max must be >= retry_backoff (5 s), got 2",
        ),
        ({"cpu_limit": 0}, "cpu_limit must be > 0 seconds (or None), got 0"),
        ({"memory_limit": 0}, "memory_limit must be an integer >= 1 (or None), got 0"),
        (
            {"max_memory_per_child": 512, "memory_limit": 512},
            "max_memory_per_child must be < memory_limit (512 MiB), got 512",
        ),
    ],
)
def test_bad_values_are_refused(kwargs: dict[str, Any], message: str) -> None:
    """A bad value raises InvalidOptions (a ValueError) naming the field, the value and the rule."""
    with pytest.raises(InvalidOptions) as caught:
        WorkerSettings(**kwargs)
    assert str(caught.value) == message
    assert isinstance(caught.value, ValueError)


def test_every_way_of_building_settings_checks_them() -> None:
    """replace() and msgspec.convert() check the values too, not only the constructor."""
    with pytest.raises(InvalidOptions, match="lease must be > 0"):
        msgspec.structs.replace(WorkerSettings(), lease=0)
    with pytest.raises(msgspec.ValidationError, match=r"\$\.processes"):
        msgspec.convert({"processes": 0}, WorkerSettings)
    with pytest.raises(msgspec.ValidationError, match="lease must be longer than heartbeat"):
        msgspec.convert({"lease": 1, "heartbeat": 2}, WorkerSettings)


def test_whole_seconds_are_stored_as_floats() -> None:
    """An int given for a time in seconds is stored as the float its annotation says."""
    s = WorkerSettings(lease=7, grace=0)
    assert type(s.lease) is float and type(s.grace) is float
    assert s == WorkerSettings(lease=7.0, grace=0.0)


def test_every_field_is_described_and_every_option_has_a_flag_and_a_variable() -> None:
    """Each field has a meaning; each option but handle_signals has a flag and an AIOQUEUE_ name."""
    assert [s.name for s in FIELDS] == list(WorkerSettings.__struct_fields__)
    assert all(s.description for s in FIELDS)
    names = [s.name for s in OPTIONS]
    assert names[:2] == ["redis_url", "log_level"]
    assert set(names[2:]) == set(WorkerSettings.__struct_fields__) - {"handle_signals"}
    for s in OPTIONS:
        assert s.flag == "--" + s.name.replace("_", "-")
        assert s.env == "AIOQUEUE_" + s.name.upper()


@pytest.mark.parametrize(
    ("name", "text", "value"),
    [
        ("burst", "true", True),
        ("burst", "1", True),
        ("burst", " FALSE ", False),
        ("burst", "0", False),
        ("processes", "4", 4),
        ("lease", "2", 2.0),
        ("lease", "0.25", 0.25),
        ("max_tasks_per_child", "100", 100),
        ("cpu_limit", "0.5", 0.5),
        ("memory_limit", "512", 512),
        ("log_level", "DEBUG", "debug"),
        ("redis_url", "redis://h:1/2", "redis://h:1/2"),
    ],
)
def test_text_is_parsed_by_the_settings_type(name: str, text: str, value: object) -> None:
    """Flag and variable text is read as the setting's type; booleans are true/false/1/0."""
    (setting,) = [s for s in OPTIONS if s.name == name]
    parsed = setting.parse(text)
    assert parsed == value and type(parsed) is type(value)


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("processes", "abc", "processes must be an integer >= 1, got 'abc'"),
        ("processes", "2.0", "processes must be an integer >= 1, got '2.0'"),
        ("lease", "soon", "lease must be > 0 seconds, got 'soon'"),
        ("lease", "inf", "lease must be > 0 seconds, got inf"),
        ("burst", "maybe", "burst must be true or false, got 'maybe'"),
        ("log_level", "loud", "log_level must be one of debug, info, warning, error, got 'loud'"),
    ],
)
def test_bad_text_is_refused(name: str, text: str, message: str) -> None:
    """Text that is no value of the setting's type raises InvalidOptions naming the setting."""
    (setting,) = [s for s in OPTIONS if s.name == name]
    with pytest.raises(InvalidOptions) as caught:
        setting.parse(text)
    assert str(caught.value) == message


def test_markdown_table_lists_every_option() -> None:
    """The table has a row per option: flag, variable, default and meaning."""
    table = markdown_table()
    lines = table.splitlines()
    assert lines[0] == "| flag | environment variable | default | meaning |"
    assert len(lines) == 2 + len(OPTIONS)
    assert "\n| `--lease SECONDS` | `AIOQUEUE_LEASE` | 5 | seconds a lease lasts" in table
    assert "\n| `--burst` | `AIOQUEUE_BURST` | false |" in table
    assert (
        "\n| `--processes N` | `AIOQUEUE_PROCESSES` | CPUs usable (affinity, container quota) |"
        in table
    )
    assert "\n| `--max-tasks-per-child N` | `AIOQUEUE_MAX_TASKS_PER_CHILD` | never |" in table


def test_readme_table_is_current() -> None:
    """The README's settings table is exactly what markdown_table() renders."""
    text = README.read_text()
    if START not in text or END not in text:
        pytest.skip(f"README.md has no {START} ... {END} markers to hold the settings table")
    between = text.split(START, 1)[1].split(END, 1)[0]
    assert between.strip("\n") == markdown_table().strip("\n"), (
        "README.md's settings table is stale; paste in aioqueue.worker.settings.markdown_table()"
    )
