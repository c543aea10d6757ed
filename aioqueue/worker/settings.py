"""How a worker runs: the one definition of every worker setting, its flag and its variable.

:class:`WorkerSettings` declares each setting once, with its type, range, default and meaning.
The command line's flags, the ``AIOQUEUE_*`` environment variables, the messages for bad values
and the README's table (:func:`markdown_table`) are all derived from it.
"""

from __future__ import annotations

import math
import os
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

import msgspec
from msgspec import Meta

from ..errors import InvalidOptions

__all__ = ("FIELDS", "OPTIONS", "Setting", "WorkerSettings", "markdown_table")

ENV_PREFIX = "AIOQUEUE_"
LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["text", "json"]


def _cpu_count() -> int:
    """The CPUs this process may use: its CPU affinity, capped by a cgroup v2 quota (a
    container's CPU limit), rounded up; at least 1."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        n = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            n = min(n, -(-int(quota) // int(period)))
    except (OSError, ValueError):  # no cgroup v2, or no limit to read
        pass
    return max(n, 1)


class WorkerSettings(msgspec.Struct, frozen=True, kw_only=True):
    """How a worker runs. Times are in seconds; every value is checked when constructed.

    With the defaults, a SIGKILLed worker's jobs are back in work within
    ``lease + maintenance_interval`` (6 s).

    :raises InvalidOptions: naming the setting, the value and the rule it breaks.
    """

    processes: Annotated[
        int,
        Meta(
            ge=1,
            description="child processes running tasks",
            extra={"default": "CPUs usable (affinity, container quota)"},
        ),
    ] = msgspec.field(default_factory=_cpu_count)
    prefetch: Annotated[
        int,
        Meta(
            ge=0,
            description="jobs queued in each child behind the one it runs; 0: adaptive, up to"
            " 5 ms of the tasks' measured run time (at most 64), and at least one for tasks"
            " under 100 ms",
            extra={"default": "0 (adaptive)"},
        ),
    ] = 0
    async_concurrency: Annotated[
        int,
        Meta(
            ge=1,
            description="async def jobs each child runs at once on its event loop (sync jobs"
            " run one at a time); 1: async ones too",
        ),
    ] = 10
    burst: Annotated[
        bool, Meta(description="exit once the queue is empty and nothing is in flight")
    ] = False
    heartbeat: Annotated[
        float, Meta(gt=0, description="seconds between the heartbeats that extend the leases")
    ] = 1.0
    lease: Annotated[
        float,
        Meta(
            gt=0, description="seconds a lease lasts without a heartbeat; then the job is recovered"
        ),
    ] = 5.0
    maintenance_interval: Annotated[
        float, Meta(gt=0, description="seconds between recoveries of expired leases")
    ] = 1.0
    block_timeout: Annotated[
        float,
        Meta(gt=0, le=60, description="longest blocking wait on Redis (a new job ends it at once)"),
    ] = 2.0
    grace: Annotated[
        float,
        Meta(ge=0, description="on SIGTERM, seconds running jobs get before they are handed back"),
    ] = 30.0
    max_tasks_per_child: (
        Annotated[
            int,
            Meta(
                ge=1, description="replace a child after this many jobs", extra={"default": "never"}
            ),
        ]
        | None
    ) = None
    retry_backoff: Annotated[
        float,
        Meta(ge=0, description="first retry's delay in seconds; doubles per attempt, jittered"),
    ] = 1.0
    retry_backoff_max: Annotated[
        float, Meta(ge=0, description="longest retry delay in seconds")
    ] = 300.0
    kill_grace: Annotated[
        float,
        Meta(
            ge=0,
            description="seconds between TERM and KILL of a timed-out child; also what a"
            " retiring child gets to exit, its stop hooks included",
        ),
    ] = 1.0
    start_timeout: Annotated[
        float,
        Meta(
            gt=0,
            description="seconds a child may take to import the tasks and run its start hooks",
        ),
    ] = 60.0
    max_start_failures: Annotated[
        int,
        Meta(
            ge=1,
            description="consecutive failed child starts after which the worker hands its jobs back"
            " and exits non-zero",
        ),
    ] = 3
    max_memory_per_child: (
        Annotated[
            int,
            Meta(
                ge=1,
                description="MiB of RSS past which a child is replaced after its job (it takes"
                " no more)",
                extra={"default": "never", "metavar": "MIB"},
            ),
        ]
        | None
    ) = None
    memory_limit: (
        Annotated[
            int,
            Meta(
                ge=1,
                description="MiB of RSS a child may hold while it runs a job, checked every"
                " 0.1 s; over it the child is killed and the job fails with"
                " MemoryLimitExceeded",
                extra={"default": "off", "metavar": "MIB"},
            ),
        ]
        | None
    ) = None
    cpu_limit: (
        Annotated[
            float,
            Meta(
                gt=0,
                description="seconds of CPU time a job may use; past it the task gets"
                " CpuLimitExceeded and its child goes on",
                extra={"default": "off"},
            ),
        ]
        | None
    ) = None
    metrics_port: (
        Annotated[
            int,
            Meta(
                ge=1,
                le=65535,
                description="serve /metrics (Prometheus) and /health/live, /health/ready on"
                " this port",
                extra={"default": "off"},
            ),
        ]
        | None
    ) = None
    metrics_host: Annotated[
        str,
        Meta(
            min_length=1,
            description="address the metrics port listens on (0.0.0.0: every interface)",
            extra={"default": "127.0.0.1"},
        ),
    ] = "127.0.0.1"
    log_format: Annotated[
        LogFormat,
        Meta(
            description="log lines as text, or as JSON objects with the job's fields",
            extra={"default": "text"},
        ),
    ] = "text"
    handle_signals: Annotated[
        bool,
        Meta(description="drain on SIGTERM and SIGINT (off to embed)", extra={"flag": False}),
    ] = True

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every value against its annotated type and range, then the rules between them.

        :raises InvalidOptions: naming the setting, the value and the rule it breaks.
        """
        for setting in FIELDS:
            value = getattr(self, setting.name)
            checked = setting.check(value)
            if type(checked) is not type(value):  # an int given for seconds is stored as a float
                msgspec.structs.force_setattr(self, setting.name, checked)
        if not self.lease > self.heartbeat:
            raise InvalidOptions(
                f"lease must be longer than heartbeat ({_show(self.heartbeat)} s),"
                f" got {_show(self.lease)}"
            )
        soft, hard = self.max_memory_per_child, self.memory_limit
        if soft is not None and hard is not None and not soft < hard:
            raise InvalidOptions(
                f"max_memory_per_child must be < memory_limit ({hard} MiB), got {soft}"
            )
        if self.retry_backoff_max < self.retry_backoff:
            raise InvalidOptions(
                f"retry_backoff_max must be >= retry_backoff ({_show(self.retry_backoff)} s),"
                f" got {_show(self.retry_backoff_max)}"
            )


class Setting(NamedTuple):
    """One option as the command line, the environment and the README see it."""

    name: str
    hint: Any  # the (annotated) type a value is converted to
    default: str  # as shown in --help and the README
    description: str
    flag_shown: bool = True

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    @property
    def kind(self) -> Any:
        """``int``, ``float``, ``bool`` or ``str``: the type a flag's text is parsed as."""
        return _unwrap(self.hint)[0]

    @property
    def metavar(self) -> str:
        _, meta, _ = _unwrap(self.hint)
        given = ((meta.extra if meta is not None else None) or {}).get("metavar")
        names: dict[Any, str] = {int: "N", float: "SECONDS"}
        return given or names.get(self.kind) or self.name.rsplit("_", 1)[-1].upper()

    @property
    def rule(self) -> str:
        """What a valid value is, as in "lease must be > 0 seconds"."""
        base, meta, optional = _unwrap(self.hint)
        if typing.get_origin(base) is Literal:
            return "one of " + ", ".join(typing.get_args(base))
        if base is bool:
            return "true or false"
        bounds = [
            f"{op} {_show(getattr(meta, key))}"
            for key, op in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="))
            if meta is not None and getattr(meta, key) is not None
        ]
        text = {int: "an integer", float: "a number of seconds", str: "a string"}[base]
        if bounds:
            text = " and ".join(bounds) + (" seconds" if base is float else "")
            text = ("an integer " if base is int else "") + text
        return text + (" (or None)" if optional else "")

    def check(self, value: Any) -> Any:
        """``value`` converted to the setting's type (an int for seconds becomes a float).

        :raises InvalidOptions: if it is of the wrong type or out of range.
        """
        try:
            value = msgspec.convert(value, self.hint)
        except msgspec.ValidationError:
            raise InvalidOptions(f"{self.name} must be {self.rule}, got {_show(value)}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidOptions(f"{self.name} must be {self.rule}, got {_show(value)}")
        return value

    def parse(self, text: str) -> Any:
        """The value that ``text`` (from a flag or a variable) spells, checked.

        :raises InvalidOptions: if it is no value of the setting's type, or out of range.
        """
        base = self.kind
        value: Any = text.strip()
        try:
            if base is bool:
                value = {"true": True, "1": True, "false": False, "0": False}[value.lower()]
            elif base is int or base is float:
                value = base(value)
            elif typing.get_origin(base) is Literal:
                value = value.lower()
        except (KeyError, ValueError):
            raise InvalidOptions(f"{self.name} must be {self.rule}, got {text!r}") from None
        return self.check(value)


def _unwrap(hint: Any) -> tuple[Any, Meta | None, bool]:
    """``(base type, its Meta, whether None is allowed)`` of an annotation."""
    args = typing.get_args(hint)
    optional = typing.get_origin(hint) in (typing.Union, types.UnionType)
    if optional:
        hint = next(a for a in args if a is not type(None))
    meta = None
    if typing.get_origin(hint) is Annotated:
        hint, *extras = typing.get_args(hint)
        meta = next((m for m in extras if isinstance(m, Meta)), None)
    return hint, meta, optional


def _show(value: Any) -> str:
    if isinstance(value, float):
        return repr(value).removesuffix(".0")  # exact: 1.0000001 is not shown as 1
    return str(value) if isinstance(value, int) else repr(value)


def _field_setting(field: msgspec.structs.FieldInfo) -> Setting:
    _, meta, _ = _unwrap(field.type)
    extra = (meta.extra if meta is not None else None) or {}
    if "default" in extra:
        default = str(extra["default"])
    elif isinstance(field.default, bool):
        default = str(field.default).lower()
    else:
        default = _show(field.default)
    description = (meta.description if meta is not None else None) or ""
    return Setting(field.name, field.type, default, description, extra.get("flag", True))


#: Every field of :class:`WorkerSettings`, in order.
FIELDS: tuple[Setting, ...] = tuple(map(_field_setting, msgspec.structs.fields(WorkerSettings)))

#: Everything ``aioqueue-worker`` takes: the two options of the command itself, then the fields.
OPTIONS: tuple[Setting, ...] = (
    Setting(
        "redis_url",
        str,
        "the queue's URL",
        "Redis to serve, instead of the URL the queue was given",
    ),
    Setting(
        "log_level", LogLevel, "info", "least severe level logged: debug, info, warning or error"
    ),
    *(s for s in FIELDS if s.flag_shown),
)


def markdown_table() -> str:
    """The README's table of the worker's options: flag, environment variable, default, meaning."""
    rows = ["| flag | environment variable | default | meaning |", "|---|---|---|---|"]
    for s in OPTIONS:
        flag = s.flag if s.kind is bool else f"{s.flag} {s.metavar}"
        rows.append(f"| `{flag}` | `{s.env}` | {s.default} | {s.description} |")
    return "\n".join(rows) + "\n"
