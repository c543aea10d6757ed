"""Task definitions: a registered function, its defaults, and typed argument checking."""

from __future__ import annotations

import difflib
import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from . import wire
from .errors import ArgumentError, InvalidOptions, SerializationError

__all__ = ("TaskDef", "task_name")

DEFAULT_RETRIES = 2


def task_name(fn: Callable[..., Any]) -> str:
    """The registered name of a function: ``module.qualname``."""
    return f"{fn.__module__}.{fn.__qualname__}"


@dataclass(eq=False)
class TaskDef:
    """A function registered with ``@queue.task``.

    :ivar retries: attempts after the first (default 2).
    :ivar timeout: seconds an attempt may run before its child is killed (None: no limit).
    :ivar concurrency: at most this many of its jobs run at once across all workers (None: no
        limit); a job's own ``options(group=...)`` takes precedence.
    :ivar rate: ``(count, seconds)``: at most ``count`` of its jobs start in any ``seconds``,
        across all workers; a job's own ``options(rate=...)`` takes precedence.
    """

    name: str
    fn: Callable[..., Any]
    retries: int = DEFAULT_RETRIES
    timeout: float | None = None
    concurrency: int | None = None
    rate: tuple[int, float] | None = None
    _signature: inspect.Signature | None = field(default=None, init=False, repr=False)
    _types: dict[str, Any] = field(default_factory=dict, init=False, repr=False)
    _return: Any = field(default=Any, init=False, repr=False)
    # its parameters' names when each is positional, without a default: calls that give each
    # of them positionally bind without inspect's general binder
    _plain: tuple[str, ...] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.retries, int) or self.retries < 0:
            raise InvalidOptions(f"retries must be an int >= 0, got {self.retries!r}")
        if self.timeout is not None and not self.timeout > 0:
            raise InvalidOptions(f"timeout must be > 0 seconds, got {self.timeout!r}")
        if self.concurrency is not None and (
            type(self.concurrency) is not int or self.concurrency < 1
        ):
            raise InvalidOptions(f"concurrency must be an int >= 1, got {self.concurrency!r}")
        from .options import check_rate

        check_rate(self.rate)
        try:
            self._signature = inspect.signature(self.fn)
            hints = typing.get_type_hints(self.fn)
        except (ValueError, TypeError, NameError):
            return
        for pname, param in self._signature.parameters.items():
            hint = hints.get(pname)
            if hint is None or hint is Any:
                continue
            if param.kind is param.VAR_POSITIONAL:
                self._types[pname] = tuple[hint, ...]  # type: ignore[valid-type]
            elif param.kind is param.VAR_KEYWORD:
                self._types[pname] = dict[str, hint]  # type: ignore[valid-type]
            else:
                self._types[pname] = hint
        self._return = hints.get("return", Any)
        params = self._signature.parameters.values()
        if all(p.kind in _POSITIONAL and p.default is p.empty for p in params):
            self._plain = tuple(p.name for p in params)

    @property
    def return_type(self) -> Any:
        """The annotated return type (``Any`` when not annotated), used to decode results."""
        return self._return

    def check(
        self,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        strict: bool = True,
        later: int = 0,
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Bind arguments to the signature and convert them to their annotated types.

        ``strict=True`` (the producer) refuses lossy conversions such as ``"40"`` for ``int``;
        the child decodes msgpack, so it converts with ``strict=False`` (e.g. a dict to a Struct).
        ``later``: leading positional arguments given later (a job's parents' results), bound
        as placeholders and left out of the arguments returned.

        :raises ArgumentError: naming the parameter that does not fit.
        """
        if self._signature is None:
            return args, kwargs
        plain = self._plain
        if plain is not None and not kwargs and not later and len(args) == len(plain):
            if not self._types:
                return args, kwargs
            converted = tuple(
                self._convert(name, value, strict) for name, value in zip(plain, args, strict=True)
            )
            return converted, kwargs
        try:
            bound = self._signature.bind(*((_LATER,) * later), *args, **kwargs)
        except TypeError as exc:
            raise self._mismatch(args, kwargs, exc) from None
        if self._types:
            for pname, value in bound.arguments.items():
                if value is not _LATER:
                    bound.arguments[pname] = self._convert(pname, value, strict)
        return bound.args[later:], bound.kwargs

    def _convert(self, pname: str, value: Any, strict: bool) -> Any:
        """``value`` converted to parameter ``pname``'s annotated type (as is if it has none).

        :raises ArgumentError: naming the parameter, if it does not fit.
        """
        hint = self._types.get(pname)
        if hint is None:
            return value
        try:
            return msgspec.convert(
                value, hint, strict=strict, from_attributes=True, dec_hook=wire.dec_hook
            )
        except msgspec.ValidationError as exc:
            raise ArgumentError(
                f"{self.name}: argument {pname!r} does not match its annotation "
                f"{_type_name(hint)}: {exc}"
            ) from None

    def _mismatch(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], exc: TypeError
    ) -> ArgumentError:
        """The error for arguments that don't bind: an unexpected keyword first (the likely
        slip, e.g. a misspelt name), then one given twice, then the missing parameters, else
        the binder's words."""
        assert self._signature is not None
        params = self._signature.parameters
        by_keyword = {
            n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        }
        takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
        unexpected = [k for k in kwargs if k not in by_keyword and not takes_any]
        if unexpected:
            name = unexpected[0]
            close = difflib.get_close_matches(name, sorted(by_keyword), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            return ArgumentError(f"{self.name}: unexpected keyword argument {name!r}{hint}")
        positional = [
            n for n, p in params.items() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
        twice = [k for k in kwargs if k in positional[: len(args)]]
        if twice:
            return ArgumentError(f"{self.name}: got multiple values for argument {twice[0]!r}")
        given = set(positional[: len(args)]) | set(kwargs)
        missing = [
            n
            for n, p in params.items()
            if p.default is p.empty
            and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
            and n not in given
        ]
        if len(missing) == 1:
            return ArgumentError(f"{self.name}: missing a required argument: {missing[0]!r}")
        if missing:
            names = ", ".join(repr(n) for n in missing)
            return ArgumentError(f"{self.name}: missing required arguments: {names}")
        return ArgumentError(f"{self.name}: {exc}")

    def unencodable(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> SerializationError:
        """Build the error naming the first argument that msgpack can't encode."""
        names: list[str] = []
        if self._signature is not None:
            names = [
                p.name
                for p in self._signature.parameters.values()
                if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
            ]
        return unencodable_error(self.name, args, kwargs, names)


def unencodable_error(
    task: str, args: tuple[Any, ...], kwargs: dict[str, Any], names: list[str] | None = None
) -> SerializationError:
    """Find the first argument that msgpack can't encode and name it in a SerializationError."""
    names = names or []
    items = [(names[i] if i < len(names) else f"#{i}", v) for i, v in enumerate(args)] + list(
        kwargs.items()
    )
    for pname, value in items:
        try:
            wire.encode(value)
        except (TypeError, ValueError, OverflowError) as exc:
            return SerializationError(
                f"{task}: argument {pname!r} of type {type(value).__name__} can't be encoded "
                f"as msgpack: {exc}"
            )
    return SerializationError(f"{task}: arguments can't be encoded as msgpack")


_LATER = object()  # an argument that comes later (see TaskDef.check)
_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or repr(hint)
