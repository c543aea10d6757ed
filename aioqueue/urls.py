"""Redis URLs: the kinds aioqueue reads, their parsing, and the check a queue makes of its URL.

Three kinds of URL:

* ``redis://``, ``rediss://``, ``unix://``: one server, in redis-py's own URL format;
* ``redis+cluster://[user:pass@]host:port[,host:port...]`` (``rediss+cluster://`` with TLS): a
  Redis Cluster, found through any of the nodes named (default port 6379);
* ``redis+sentinel://[user:pass@]host:port[,host:port...]/SERVICE[/DB]``
  (``rediss+sentinel://``): the master that the Sentinels at those addresses name for
  ``SERVICE`` (default port 26379). The credentials are the master's; Sentinels that ask for
  their own take ``?sentinel_username=...&sentinel_password=...``.

Other query options (``?ssl_cert_reqs=none``, ``?client_name=...``) go to every connection, as
in redis-py's URLs. :mod:`aioqueue.connect` makes the client a URL names.

This module loads redis-py only to read a URL's options, on the first :func:`parse`: a process
that makes no client (a worker's child, see :func:`schemes_only`) never loads it.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, cast
from urllib.parse import parse_qsl, unquote, urlencode

from .errors import InvalidOptions

__all__ = ("SCHEMES", "Target", "check_url", "parse", "safe_url", "schemes_only")

Kind = Literal["server", "cluster", "sentinel"]

SCHEMES = (
    "redis://", "rediss://", "unix://", "redis+cluster://", "rediss+cluster://",
    "redis+sentinel://", "rediss+sentinel://",
)  # fmt: skip
_KINDS: dict[str, Kind] = {
    "redis": "server", "rediss": "server", "unix": "server",
    "redis+cluster": "cluster", "rediss+cluster": "cluster",
    "redis+sentinel": "sentinel", "rediss+sentinel": "sentinel",
}  # fmt: skip
_DEFAULT_PORT = {"cluster": 6379, "sentinel": 26379}
_EXAMPLE = {
    "cluster": "redis+cluster://host1:6379,host2:6379",
    "sentinel": "redis+sentinel://host1:26379,host2:26379/mymaster",
}
_SENTINEL_AUTH = ("sentinel_username", "sentinel_password")


@dataclass(frozen=True, slots=True)
class Target:
    """A parsed URL: which kind of deployment, and how to reach it.

    :ivar nodes: the cluster nodes or the Sentinels named (none for a single server).
    :ivar service: the Sentinel service name.
    :ivar options: connection settings as redis-py names them: credentials, TLS, query options.
    :ivar sentinel: the Sentinels' own credentials.
    """

    kind: Kind
    nodes: tuple[tuple[str, int], ...] = ()
    service: str | None = None
    db: int = 0
    tls: bool = False
    options: dict[str, Any] = field(default_factory=dict)
    sentinel: dict[str, Any] = field(default_factory=dict)


def parse(url: str) -> Target:
    """Parse a Redis URL of any of the :data:`SCHEMES`.

    :raises ValueError: saying what is wrong with it.
    """
    scheme, sep, rest = url.partition("://")
    kind = _KINDS.get(scheme.lower()) if sep else None
    if kind is None:
        raise ValueError(f"use one of the schemes {', '.join(SCHEMES)}")
    if kind == "server":
        return Target("server", options=_redis_options(url))
    tls = scheme.lower().startswith("rediss")
    rest = rest.partition("#")[0]
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    if not hosts:
        what = "node" if kind == "cluster" else "Sentinel"
        raise ValueError(f"name at least one {what} as host:port, as in {_EXAMPLE[kind]}")
    nodes = tuple(_node(h, _DEFAULT_PORT[kind]) for h in hosts.split(","))
    pairs = parse_qsl(query, keep_blank_values=True)
    sentinel = {k: v for k, v in pairs if k in _SENTINEL_AUTH and v}
    rebuilt = f"{'rediss' if tls else 'redis'}://{userinfo}{at}localhost"
    rebuilt += "/?" + urlencode([(k, v) for k, v in pairs if k not in _SENTINEL_AUTH])
    options = _redis_options(rebuilt)
    for name in ("host", "port", "connection_class"):
        options.pop(name, None)
    db = int(cast(int, options.pop("db", 0) or 0))
    service = None
    if kind == "cluster":
        if path not in ("", "0") or db:
            raise ValueError("a cluster has only db 0: name no db")
    else:
        parts = path.split("/")
        service = unquote(parts[0])
        if not service:
            raise ValueError(f"name the Sentinel service after the hosts, as in {_EXAMPLE[kind]}")
        if len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit()):
            raise ValueError(f"only a db number may follow the service name, got '/{path}'")
        if len(parts) == 2:
            db = int(parts[1])
    return Target(kind, nodes, service, db, tls, options, sentinel)


def _node(text: str, default_port: int) -> tuple[str, int]:
    """``host``, ``host:port`` or ``[v6 address]:port`` as (host, port)."""
    if not text:
        raise ValueError("the list of hosts has an empty entry")
    if text.startswith("["):
        host, close, port = text[1:].partition("]")
        if not close or (port and not port.startswith(":")):
            raise ValueError(f"{text!r} is not [address]:port")
        port = port[1:]
    elif text.count(":") > 1:
        raise ValueError(f"{text!r}: write an IPv6 address in brackets, as in [::1]:6379")
    else:
        host, _, port = text.partition(":")
    if not host:
        raise ValueError(f"{text!r} has no host")
    if not port:
        return unquote(host), default_port
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} has no valid port (1-65535)")
    return unquote(host), int(port)


def _redis_options(url: str) -> dict[str, Any]:
    """redis-py's reading of a one-server URL: the connection options it names."""
    from redis.asyncio.connection import parse_url  # loads redis-py: see the module's text

    return dict(parse_url(url))


def safe_url(url: str) -> str:
    """The URL with any password replaced by ``***``."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


_scheme_only = False  # set within schemes_only()


@contextlib.contextmanager
def schemes_only() -> Iterator[None]:
    """Within this, :func:`check_url` checks a URL's scheme only, and leaves the rest to the
    making of a client (which checks it in full). A worker's children import the task module
    so: the supervisor imported the same module and checked its URL in full, and a child makes
    no client unless a task asks for one, so it need not load redis-py to start."""
    global _scheme_only
    before, _scheme_only = _scheme_only, True
    try:
        yield
    finally:
        _scheme_only = before


def check_url(url: str) -> str:
    """Return ``url`` if it is a Redis URL that the client accepts.

    :raises InvalidOptions: naming the URL (password hidden) and what is wrong with it.
    """
    if not isinstance(url, str) or not url.lower().startswith(SCHEMES):
        raise InvalidOptions(
            f"redis_url {safe_url(str(url))!r} is not a Redis URL: "
            f"use one of the schemes {', '.join(SCHEMES)}"
        )
    if _scheme_only:
        return url
    try:
        parse(url)
    except ValueError as exc:
        raise InvalidOptions(f"redis_url {safe_url(url)!r} is invalid: {exc}") from None
    return url
