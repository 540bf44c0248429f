"""Every taskcast setting, read once from environment variables.

Workers, bridges and the CLI all call :func:`load_settings`, so they agree on
the Redis URL and key prefix without sharing a config file. A bad value stops
start-up with a :class:`ConfigError` naming the variable, instead of failing
later with a confusing Redis or socket error.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar
from urllib.parse import urlparse, urlsplit

T = TypeVar("T")

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


class ConfigError(ValueError):
    """A setting has a value taskcast cannot use; the message names the variable."""


def _url(schemes: tuple[str, ...]) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        scheme = urlparse(raw).scheme
        if scheme not in schemes:
            raise ValueError(f"expected a URL starting with one of {', '.join(schemes)}")
        return raw

    return parse


def _int(low: int, high: int | None = None) -> Callable[[str], int]:
    bound = f"between {low} and {high}" if high is not None else f">= {low}"

    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:  # Python's "invalid literal for int() with base 10" says less
            raise ValueError(f"must be a whole number {bound}") from None
        if value < low or (high is not None and value > high):
            raise ValueError(f"must be {bound}")
        return value

    return parse


def _float(low: float) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            value = float("nan")
        if not value >= low:  # also rejects NaN
            raise ValueError(f"must be a number >= {low}")
        return value

    return parse


def _bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("must be true or false")


def _processes(raw: str) -> int:
    """A count of bridge processes, or ``auto``: one per core this process may run on."""
    if raw.strip().lower() == "auto":
        return len(os.sched_getaffinity(0))
    return _int(1, 256)(raw)


def _prefix(raw: str) -> str:
    if not raw or any(c.isspace() for c in raw):
        raise ValueError("must be a non-empty string without spaces")
    return raw


def _origins(raw: str) -> tuple[str, ...]:
    origins = tuple(part.strip().rstrip("/") for part in raw.split(",") if part.strip())
    for origin in origins:
        if not origin.startswith(("http://", "https://")) or origin.count("/") != 2:
            raise ValueError(f"{origin!r} is not an origin like https://app.example.com")
    return origins


_NAME = re.compile(r"\.?[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*")


def _host(raw: str) -> str:
    """One allowed host: ``*``, an IP literal (IPv6 with or without brackets, kept without),
    or a DNS name, lower-cased and without its trailing dot (``.example.com``: it and its
    subdomains)."""
    host = raw.strip().lower().rstrip(".")
    literal = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        return str(ipaddress.ip_address(literal))
    except ValueError:
        pass
    if host != "*" and not _NAME.fullmatch(host):
        raise ValueError(f"{raw.strip()!r} is not a name (no scheme, port or path), .domain or *")
    return host


def _hosts(raw: str) -> tuple[str, ...]:
    return tuple(_host(part) for part in raw.split(",") if part.strip())


def _public_url(raw: str) -> str:
    """Where browsers reach the bridge: behind a proxy, its public name."""
    url = urlsplit(raw)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ValueError("must be an http:// or https:// URL, e.g. https://tasks.example.com")
    return raw.rstrip("/")


def _trace_url(raw: str) -> str:
    """The dashboard's link to a trace: a typo'd placeholder would link every trace nowhere."""
    if "{trace_id}" not in raw:
        raise ValueError("must contain {trace_id}, e.g. http://jaeger:16686/trace/{trace_id}")
    if not raw.startswith(("http://", "https://", "/")):
        raise ValueError("must be an http:// or https:// URL, or a path on the bridge's host")
    return raw


_REDIS = _url(("redis", "rediss", "unix"))


@dataclass(frozen=True)
class Settings:
    """Resolved configuration; see the README's configuration table for each variable."""

    redis_url: str = DEFAULT_REDIS_URL
    broker_url: str = DEFAULT_REDIS_URL
    result_backend: str = DEFAULT_REDIS_URL
    prefix: str = "taskcast:"
    history_maxlen: int = 1000
    history_ttl: int = 86400
    live_maxlen: int = 100_000
    live_partitions: int = 1
    redis_cluster: bool = False
    progress_interval: float = 0.05
    result_max_bytes: int = 65536
    emit_timeout: float = 0.5
    send_traceback: bool = False
    heartbeat_interval: float = 10.0
    outbox_events: int = 10_000
    shutdown_timeout: float = 5.0
    max_redeliveries: int = 3
    result_expires: int = 86400
    host: str = "127.0.0.1"
    port: int = 8765
    processes: int = 1
    max_subscriptions: int = 1000
    max_message_bytes: int = 65536
    send_buffer_bytes: int = 1 << 20
    max_buffered_bytes: int = 0
    ping_interval: float = 20.0
    sse_keepalive: float = 15.0
    compression: bool = False
    celery_events: bool = False
    max_event_bytes: int = 65536
    command_rate: float = 50.0
    command_burst: int = 100
    max_connections: int = 0
    max_connections_per_ip: int = 1000
    auth_secret: str = field(default="", repr=False)  # never in logs or tracebacks
    auth_public_key: str = ""
    auth_issuer: str = ""
    auth_audience: str = ""
    allowed_origins: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = ()
    public_url: str = ""
    insecure: bool = False
    record_args: bool = False
    trace_url: str = ""


# field name -> (environment variable, parser)
_ENV: dict[str, tuple[str, Callable[[str], Any]]] = {
    "redis_url": ("TASKCAST_REDIS_URL", _REDIS),
    # Celery's own variables, read where taskcast starts Celery apps of its own (the
    # bridge's revoke and ingester, the CLI, the demo) and never judged: any value
    # Celery accepts (django-db, db+postgresql://, sqs://, ...) is Celery's to refuse.
    "broker_url": ("CELERY_BROKER_URL", str),
    "result_backend": ("CELERY_RESULT_BACKEND", str),
    "prefix": ("TASKCAST_PREFIX", _prefix),
    "history_maxlen": ("TASKCAST_HISTORY_MAXLEN", _int(1)),
    "history_ttl": ("TASKCAST_HISTORY_TTL", _int(1)),
    "live_maxlen": ("TASKCAST_LIVE_MAXLEN", _int(100)),
    "live_partitions": ("TASKCAST_LIVE_PARTITIONS", _int(1, 1024)),
    "redis_cluster": ("TASKCAST_REDIS_CLUSTER", _bool),
    "progress_interval": ("TASKCAST_PROGRESS_INTERVAL", _float(0.0)),
    "result_max_bytes": ("TASKCAST_RESULT_MAX_BYTES", _int(64)),
    "emit_timeout": ("TASKCAST_EMIT_TIMEOUT", _float(0.001)),
    "send_traceback": ("TASKCAST_SEND_TRACEBACK", _bool),
    "heartbeat_interval": ("TASKCAST_HEARTBEAT_INTERVAL", _float(0.0)),
    "outbox_events": ("TASKCAST_OUTBOX_EVENTS", _int(1)),
    "shutdown_timeout": ("TASKCAST_SHUTDOWN_TIMEOUT", _float(0.0)),
    "max_redeliveries": ("TASKCAST_MAX_REDELIVERIES", _int(0)),
    "result_expires": ("TASKCAST_RESULT_EXPIRES", _int(1)),
    "host": ("TASKCAST_HOST", str),
    "port": ("TASKCAST_PORT", _int(0, 65535)),
    "processes": ("TASKCAST_PROCESSES", _processes),
    "max_subscriptions": ("TASKCAST_MAX_SUBSCRIPTIONS", _int(1)),
    "max_message_bytes": ("TASKCAST_MAX_MESSAGE_BYTES", _int(1024)),
    "send_buffer_bytes": ("TASKCAST_SEND_BUFFER_BYTES", _int(1024)),
    "max_buffered_bytes": ("TASKCAST_MAX_BUFFERED_BYTES", _int(0)),
    "ping_interval": ("TASKCAST_PING_INTERVAL", _float(0.1)),
    "sse_keepalive": ("TASKCAST_SSE_KEEPALIVE", _float(0.1)),
    "compression": ("TASKCAST_COMPRESSION", _bool),
    "celery_events": ("TASKCAST_CELERY_EVENTS", _bool),
    "max_event_bytes": ("TASKCAST_MAX_EVENT_BYTES", _int(1024)),
    "command_rate": ("TASKCAST_COMMAND_RATE", _float(0.1)),
    "command_burst": ("TASKCAST_COMMAND_BURST", _int(1)),
    "max_connections": ("TASKCAST_MAX_CONNECTIONS", _int(0)),
    "max_connections_per_ip": ("TASKCAST_MAX_CONNECTIONS_PER_IP", _int(1)),
    "auth_secret": ("TASKCAST_AUTH_SECRET", str),
    "auth_public_key": ("TASKCAST_AUTH_PUBLIC_KEY", str),
    "auth_issuer": ("TASKCAST_AUTH_ISSUER", str),
    "auth_audience": ("TASKCAST_AUTH_AUDIENCE", str),
    "allowed_origins": ("TASKCAST_ALLOWED_ORIGINS", _origins),
    "allowed_hosts": ("TASKCAST_ALLOWED_HOSTS", _hosts),
    "public_url": ("TASKCAST_PUBLIC_URL", _public_url),
    "insecure": ("TASKCAST_INSECURE", _bool),
    "record_args": ("TASKCAST_RECORD_ARGS", _bool),
    "trace_url": ("TASKCAST_TRACE_URL", _trace_url),
}

VARIABLES: dict[str, str] = {name: var for name, (var, _) in _ENV.items()}
"""Settings field -> the environment variable it is read from."""
ENVIRONMENT_VARIABLES: tuple[str, ...] = tuple(VARIABLES.values())


def to_environment(settings: Settings) -> dict[str, str]:
    """Environment variables that make :func:`load_settings` return ``settings`` again.

    For starting workers and bridges as child processes with the settings of
    this one.
    """
    return {
        VARIABLES[item.name]: environment_value(getattr(settings, item.name))
        for item in fields(Settings)
    }


def environment_value(value: Any) -> str:
    """A setting as its variable spells it: ``true``/``false``, commas between list items."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return ",".join(value)
    return str(value)


def load_settings(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Build :class:`Settings` from ``environ`` (default ``os.environ``).

    ``overrides`` win over the environment (command-line flags use them).
    The broker and result backend default to the event-store Redis, so one
    variable is enough for a single-Redis deployment.
    """
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for item in fields(Settings):
        var, parse = _ENV[item.name]
        raw = env.get(var)
        if raw is None or raw == "":
            continue
        try:
            values[item.name] = parse(raw.strip())
        except ValueError as exc:
            raise ConfigError(f"{var}={raw!r} is invalid: {exc}") from None
    values.update({k: v for k, v in overrides.items() if v is not None})
    values.setdefault("redis_url", DEFAULT_REDIS_URL)
    values.setdefault("broker_url", values["redis_url"])
    values.setdefault("result_backend", values["redis_url"])
    settings = Settings(**values)
    if settings.redis_cluster and settings.live_partitions < 2:
        # One partition keeps the single-server layout, whose shared keys sit in
        # other Cluster slots than an operation's: every append would fail.
        raise ConfigError(
            "TASKCAST_LIVE_PARTITIONS must be at least 2 with TASKCAST_REDIS_CLUSTER=true "
            "(one per master is a good start)"
        )
    return settings
