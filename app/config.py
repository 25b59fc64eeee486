"""The proxy.yaml schema: read once, validated, frozen.

Every key the proxy understands is declared here and nowhere else: each block
is a frozen dataclass whose fields carry their default and their check. Loading
produces immutable objects; a problem raises ConfigError naming the exact
place in the file (``proxy.services[1].hosts[0].port``) and the reason, so a
user can fix the file without reading this code. A file is read to its end:
every problem in it is reported at once (ConfigErrors), not one per run.

The original project's schema (listen, services with name/domain/hosts) is
accepted unchanged; everything else is optional. Service settings left out
come from ``proxy.defaults``, key by key.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import ipaddress
import os
import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG_PATH = REPO_ROOT / "proxy.yaml"

STRATEGIES = ("round_robin", "random", "least_connections")

_HOSTNAME_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")


class ConfigError(ValueError):
    """A proxy.yaml problem: ``where`` is the key path, ``reason`` what is wrong."""

    def __init__(self, where: str, reason: str):
        super().__init__(f"{where}: {reason}")
        self.where = where
        self.reason = reason


class ConfigErrors(ConfigError):
    """Several problems of one file, each a ConfigError, in the order they were found."""

    def __init__(self, errors: list[ConfigError]):
        ValueError.__init__(self, "\n".join(str(error) for error in errors))
        self.errors = tuple(errors)
        self.where = errors[0].where
        self.reason = f"{len(errors)} problems"


def problems(error: ConfigError) -> tuple[ConfigError, ...]:
    """Each problem an error stands for: itself, or the ones it gathers."""
    return error.errors if isinstance(error, ConfigErrors) else (error,)


Check = Callable[[Any, str], Any]


# --- reading on past a problem ----------------------------------------------
# parse_config collects: a failing field, list item or block is recorded, its
# siblings are still checked, and the parents of a failed part fail too (without
# a second message). Anything else (a block read on its own) raises the first one.

_PROBLEMS: contextvars.ContextVar[list | None] = contextvars.ContextVar("problems", default=None)


class _Reported(Exception):
    """A part failed and its problems are recorded: its parent has failed too."""


FAILED = object()  # the value of a part that did not pass its check


def _note(error: ConfigError) -> None:
    """Record a problem and read on, or raise it when nothing collects."""
    found = _PROBLEMS.get()
    if found is None:
        raise error
    found.append(error)


def _recorded() -> int:
    found = _PROBLEMS.get()
    return 0 if found is None else len(found)


def _attempt(check: Callable[..., Any], *args: Any) -> Any:
    """``check(*args)``, or FAILED once its problem is recorded."""
    try:
        return check(*args)
    except _Reported:
        return FAILED
    except ConfigError as error:
        _note(error)
        return FAILED


def _passing(items: list, where: str, check: Callable[..., Any], *args: Any) -> dict[int, Any]:
    """``check(item, where[i], *args)`` for every item: {index: value} of those that passed."""
    checked = {i: _attempt(check, item, f"{where}[{i}]", *args) for i, item in enumerate(items)}
    return {i: value for i, value in checked.items() if value is not FAILED}


def _complete(passed: dict[int, Any], items: list) -> tuple:
    """The items' values when every one passed; else their parent has failed too."""
    if len(passed) < len(items):
        raise _Reported
    return tuple(passed.values())


def _each(items: list, where: str, check: Callable[..., Any], *args: Any) -> tuple:
    """``check(item, where[i], *args)`` for every item, all of them checked."""
    return _complete(_passing(items, where, check, *args), items)


def _repeats(values: dict[int, Any]) -> list[tuple[int, int]]:
    """(index, index of its first place) of every value seen again."""
    first: dict = {}
    found = []
    for index, value in values.items():
        if value in first:
            found.append((index, first[value]))
        else:
            first[value] = index
    return found


def setting(default: Any, check: Check, doc: str, required: bool = False) -> Any:
    """A config field: its default (or required), the check its value must pass,
    and what it means (docs/configuration.md is generated from these:
    app/config_reference.py)."""
    return field(default=default, metadata={"check": check, "doc": doc, "required": required})


# --- field checks ----------------------------------------------------------


def _describe(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, (dict, list)):
        return f"a {'mapping' if isinstance(value, dict) else 'list'}"
    return repr(value)


def integer(low: int, high: int) -> Check:
    def check(value: Any, where: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ConfigError(where, f"expected an integer {low}-{high}, got {_describe(value)}")
        return value

    return check


def number(low: float, high: float) -> Check:
    def check(value: Any, where: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(where, f"expected a number {low}-{high}, got {_describe(value)}")
        if not low <= value <= high:
            raise ConfigError(where, f"expected a number {low}-{high}, got {_describe(value)}")
        return float(value)

    return check


def seconds(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(where, f"expected a positive number of seconds, got {_describe(value)}")
    return float(value)


def boolean(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(where, f"expected true or false, got {_describe(value)}")
    return value


def optional(check: Check) -> Check:
    """``null`` (or leaving the key out, where the default is None) turns the setting off."""

    def check_optional(value: Any, where: str) -> Any:
        return None if value is None else check(value, where)

    return check_optional


def one_of(choices: tuple[str, ...]) -> Check:
    def check(value: Any, where: str) -> str:
        if value not in choices:
            raise ConfigError(
                where, f"expected one of {', '.join(choices)}, got {_describe(value)}"
            )
        return value

    return check


strategy = one_of(STRATEGIES)


def url_path(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.startswith("/") or any(c in value for c in " \r\n"):
        raise ConfigError(where, f"expected a path starting with /, got {_describe(value)}")
    return value


def metric_prefix(value: Any, where: str) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*", value):
        raise ConfigError(
            where, f"expected a Graphite path such as lbproxy, got {_describe(value)}"
        )
    return value


def status_list(value: Any, where: str) -> tuple[int, ...]:
    if not isinstance(value, list):
        raise ConfigError(where, f"expected a list of 5xx status codes, got {_describe(value)}")
    return _each(value, where, integer(500, 599))


def name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(where, f"expected a non-empty string, got {_describe(value)}")
    return value


def domain(value: Any, where: str) -> str:
    """A domain is matched against Host headers: lower-case, no port, no dot at the end."""
    if not isinstance(value, str) or not is_hostname(value.lower().rstrip(".")):
        raise ConfigError(
            where, f"expected a DNS name such as api.example.com, got {_describe(value)}"
        )
    return value.lower().rstrip(".")


def address(value: Any, where: str) -> str:
    """An IPv4/IPv6 literal or a DNS name (a Kubernetes Service, say)."""
    if isinstance(value, str) and (is_ip(value) or is_hostname(value.lower())):
        return value
    raise ConfigError(where, f"expected an IP address or a DNS name, got {_describe(value)}")


def is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def is_hostname(value: str) -> bool:
    labels = value.split(".")
    return len(value) <= 253 and all(_HOSTNAME_LABEL.fullmatch(label) for label in labels)


port = integer(1, 65535)

# The directory relative certificate and CA paths are read from: proxy.yaml's.
_BASE_DIRECTORY: contextvars.ContextVar[Path] = contextvars.ContextVar("base", default=Path("."))

ALPN_PROTOCOLS = ("h2", "http/1.1")


def file_path(value: Any, where: str) -> str:
    """A readable file; relative to the directory of proxy.yaml. Kept absolute."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(where, f"expected a file path, got {_describe(value)}")
    path = Path(value)
    if not path.is_absolute():
        path = _BASE_DIRECTORY.get() / path
    if not path.is_file():
        raise ConfigError(where, f"no such file: {path}")
    return str(path.resolve())


def ca_bundle(value: Any, where: str) -> str:
    path = file_path(value, where)
    try:
        ssl.create_default_context(cafile=path)
    except ssl.SSLError as error:
        raise ConfigError(where, f"not a PEM CA bundle ({error.reason or error})") from None
    return path


def alpn_list(value: Any, where: str) -> tuple[str, ...]:
    allowed = ", ".join(ALPN_PROTOCOLS)
    if not isinstance(value, list) or not value:
        raise ConfigError(where, f"expected a list of {allowed}, got {_describe(value)}")
    for i, item in enumerate(value):
        if item not in ALPN_PROTOCOLS:
            raise ConfigError(f"{where}[{i}]", f"expected one of {allowed}, got {_describe(item)}")
    if len(set(value)) != len(value):
        raise ConfigError(where, "lists a protocol twice")
    if "http/1.1" not in value:
        raise ConfigError(where, "must include http/1.1 (clients without HTTP/2 need it)")
    return tuple(value)


def server_name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not is_hostname(value.lower().rstrip(".")):
        raise ConfigError(
            where, f"expected a DNS name such as api.internal, got {_describe(value)}"
        )
    return value.lower().rstrip(".")


# --- the schema ------------------------------------------------------------


@dataclass(frozen=True)
class Certificate:
    """One certificate a TLS listener serves, chosen by SNI from the names in its SAN."""

    cert: str = setting(None, file_path, "PEM certificate chain, leaf first", required=True)
    key: str = setting(None, file_path, "its PEM private key", required=True)
    names: tuple[str, ...] = ()  # the DNS names of its SAN, read when it is loaded
    # The files as validated: workers load these, so a file replaced by a bad
    # one before a refused reload cannot reach a worker (it would not boot).
    pem: bytes = field(default=b"", repr=False, compare=False)


def certificates(value: Any, where: str) -> tuple[Certificate, ...]:
    items = _list(value, where)
    passed = _passing(items, where, _certificate)
    for index, certificate in passed.items():
        if index and not certificate.names:
            _note(ConfigError(
                f"{where}[{index}].cert",
                "has no DNS name in its SAN, so SNI can never choose it (only the first"
                " certificate, the default, may have none)",
            ))  # fmt: skip
    return _complete(passed, items)


def _certificate(item: Any, where: str) -> Certificate:
    certificate = block(Certificate, item, where)
    _load_certificate(certificate, where)
    names = certificate_names(certificate.cert, f"{where}.cert")
    pem = Path(certificate.cert).read_bytes() + b"\n" + Path(certificate.key).read_bytes()
    return dataclasses.replace(certificate, names=names, pem=pem)


def certificate_names(path: str, where: str) -> tuple[str, ...]:
    """The DNS names in the SAN of the first certificate of a PEM file, lower-case."""
    # Imported here: only a config with TLS listeners pays for it.
    from cryptography import x509

    try:
        leaf = x509.load_pem_x509_certificate(Path(path).read_bytes())
    except ValueError as error:
        raise ConfigError(where, f"not a PEM certificate ({error})") from None
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    return tuple(name.lower().rstrip(".") for name in san.get_values_for_type(x509.DNSName))


def _load_certificate(certificate: Certificate, where: str) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(certificate.cert, certificate.key)
    except ssl.SSLError as error:
        reason = error.reason or str(error)
        raise ConfigError(
            where, f"the certificate and key do not load as a pair ({reason})"
        ) from None


@dataclass(frozen=True)
class ListenTLS:
    """TLS termination on a listener (docs/tls.md). The admin listener stays plain HTTP."""

    certificates: tuple[Certificate, ...] = setting(
        (),
        certificates,
        "the first is the default (unknown or missing SNI); each other one is chosen by SNI"
        " from the DNS names in its SAN",
        required=True,
    )
    alpn: tuple[str, ...] = setting(
        ("http/1.1",), alpn_list, "protocols offered by ALPN: `[h2, http/1.1]` offers HTTP/2 too"
    )


@dataclass(frozen=True)
class Listen:
    """Where the proxy takes client traffic: a mapping, or a list of them (say 8080
    plain and 8443 TLS side by side)."""

    address: str = setting("0.0.0.0", address, "address to listen on")
    port: int = setting(8080, port, "port to listen on")
    tls: ListenTLS | None = setting(None, ListenTLS, "TLS on this listener")


@dataclass(frozen=True)
class Admin:
    """The admin listener: health, status and Prometheus metrics (docs/observability.md).
    By default it listens on 0.0.0.0:9901, and it carries `/metrics` unless
    `proxy.prometheus: false`: keep the port out of clients' reach."""

    address: str = setting("0.0.0.0", address, "address of the admin listener")
    port: int = setting(9901, port, "its port; must differ from `listen.port`")
    ready_requires_upstreams: bool = setting(
        False,
        boolean,
        "`/readyz` answers 503 while a service has no usable host. Off by default: every"
        " replica sees the same upstreams, so all would leave the Service together and take"
        " every other service down with them (docs/operations.md)",
    )


@dataclass(frozen=True)
class Limits:
    """Proxy-wide limits on what clients send (the header ones are gunicorn's)."""

    max_body_size: int = setting(
        100 * 1024 * 1024,
        integer(0, 2**62),
        "larger request bodies get `413` (100 MiB): Content-Length at once, chunked as soon"
        " as the limit is passed",
    )
    max_header_count: int = setting(
        100, integer(1, 32768), "more request headers get `431` (gunicorn's `limit_request_fields`)"
    )
    max_header_size: int = setting(
        8190, integer(64, 65536), "a longer header line gets `431` (`limit_request_field_size`)"
    )
    max_request_line: int = setting(
        8190, integer(64, 65536), "a longer request line gets `414` (`limit_request_line`)"
    )
    client_timeout: int = setting(
        10,
        integer(1, 3600),  # whole seconds: gunicorn's keepalive takes an int
        "whole seconds a client may take to send its request head, or sit idle between"
        " requests (gunicorn's `keepalive`); also how long a request body read or a response"
        " write may stall. A slow client holds nothing but its own connection",
    )


@dataclass(frozen=True)
class Statsd:
    """Metrics go to StatsD when a host is set (here or in `$STATSD_HOST`)."""

    host: str | None = setting(
        None, optional(address), "StatsD host (IP or DNS name); none: metrics off. `$STATSD_HOST`"
    )
    port: int = setting(8125, port, "StatsD port. `$STATSD_PORT`")
    prefix: str = setting(
        "lbproxy", metric_prefix, "first part of every metric name. `$STATSD_PREFIX`"
    )
    interval: float = setting(1.0, seconds, "seconds between each worker's gauge reports")


@dataclass(frozen=True)
class Timeout:
    """Time limits on the upstream side (compared with nginx and HAProxy in
    docs/behaviour.md)."""

    connect: float = setting(2.0, seconds, "seconds to open a connection to a host (then the next)")
    read: float = setting(
        30.0, seconds, "seconds to wait for each read from a host: a stall (then `504`)"
    )
    total: float | None = setting(
        None,
        optional(seconds),
        "seconds until the response head, retries included (then `504`); none: no limit"
        " beyond `read`",
    )
    response: float = setting(
        300.0,
        seconds,
        "seconds for the whole exchange, both bodies and retries included: a peer that"
        " sends a byte just inside every `read` timeout is cut here (`504`, `408` while the"
        " client still sends its body, a cut response once the head is out)",
    )
    tunnel_idle: float = setting(
        300.0,
        seconds,
        "seconds a WebSocket tunnel may pass no byte either way before both sides are closed"
        " (HAProxy's `timeout tunnel`)",
    )
    idle: float = setting(
        1.5,
        seconds,
        "seconds a pooled connection may sit idle and still be reused: keep it below the"
        " upstreams' keep-alive (gunicorn 2 s, Node.js 5 s) so we drop it before they do",
    )


@dataclass(frozen=True)
class Retry:
    """When a failed try goes to another host (docs/behaviour.md, "Failures and retries")."""

    attempts: int = setting(
        2, integer(0, 10), "retries after the first try, each on another host (`0`: no failover)"
    )
    on_status: tuple[int, ...] = setting(
        (),
        status_list,
        "upstream statuses (5xx) retried for idempotent requests, e.g. `[502, 503, 504]`",
    )
    budget: float = setting(
        0.2,
        number(0, 1),
        "retries may add at most this share of the service's requests over the last 10 s",
    )
    min_per_second: float = setting(
        3.0,
        number(0, 10000),
        "... plus this many per second (per worker; at least 10 in the bucket)",
    )


@dataclass(frozen=True)
class Outlier:
    """Passive health: hosts that fail in a row leave the rotation for a while."""

    consecutive_failures: int = setting(3, integer(1, 1000), "failures in a row that eject a host")
    base_ejection: float = setting(
        5.0, seconds, "seconds out for a first ejection; doubled on each new one ..."
    )
    max_ejection: float = setting(
        60.0, seconds, "... up to this; a host well for this long starts short again"
    )
    max_ejected_percent: int = setting(
        50,
        integer(0, 100),
        "never more than this share of the hosts ejected at once (rounded down: a lone host"
        " is never ejected)",
    )
    count_5xx: bool = setting(False, boolean, "count upstream 5xx answers as failures too")


@dataclass(frozen=True)
class HealthCheck:
    """Active health checks: off unless the block is given (even `{}`); `null`
    turns off what `proxy.defaults` set."""

    path: str = setting(
        "/", url_path, "probed with GET and the service's domain as `Host`; below 400 is healthy"
    )
    interval: float = setting(5.0, seconds, "seconds between probes of a host")
    timeout: float = setting(1.0, seconds, "seconds for one probe")
    healthy_threshold: int = setting(2, integer(1, 100), "probes in a row that bring a host back")
    unhealthy_threshold: int = setting(3, integer(1, 100), "probes in a row that take a host out")


@dataclass(frozen=True)
class UpstreamTLS:
    """Speak https to the service's hosts. Never a plaintext fallback."""

    ca: str | None = setting(
        None,
        optional(ca_bundle),
        "PEM CA bundle the hosts' certificates must chain to; none: the system's",
    )
    server_name: str | None = setting(
        None,
        optional(server_name),
        "the SNI sent and the name verified in the host's certificate; none: the service's domain",
    )
    verify: bool = setting(
        True, boolean, "verify the certificate chain and name (`false` logs a warning at start)"
    )


_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 §5.6.2


def token(what: str) -> Check:
    def check(value: Any, where: str) -> str:
        if not isinstance(value, str) or not _TOKEN.fullmatch(value):
            raise ConfigError(
                where,
                f"expected {what} (an RFC 9110 token: letters, digits and !#$%&'*+-.^_`|~),"
                f" got {_describe(value)}",
            )
        return value

    return check


def hash_header(value: Any, where: str) -> str:
    """A request header affinity can read: one that reaches the upstream as the client sent it."""
    from app.http.headers import HOP_BY_HOP

    value = token("a header name")(value, where)
    if "_" in value:
        raise ConfigError(where, "headers with _ are dropped (as nginx and gunicorn do): use -")
    if value.lower() in HOP_BY_HOP | {"x-request-id", "host"}:
        raise ConfigError(
            where, f"{value} is the proxy's own or hop-by-hop: it cannot key affinity"
        )
    return value


@dataclass(frozen=True)
class AffinityCookie:
    """Cookie insert (HAProxy's `cookie SRV insert indirect nocache`): a response
    from another host than the client's cookie names sets one naming it."""

    name: str = setting("lbproxy_affinity", token("a cookie name"), "the cookie's name")
    ttl: int | None = setting(
        None,
        optional(integer(1, 10**9)),
        "its `Max-Age` in seconds; none: a session cookie, gone when the browser closes",
    )


@dataclass(frozen=True)
class AffinityHash:
    """Consistent hashing (nginx's `hash $x consistent`): requests with the same
    value go to the same host; exactly one of `header` or `cookie`."""

    header: str | None = setting(None, optional(hash_header), "hash this request header's value")
    cookie: str | None = setting(
        None,
        optional(token("a cookie name")),
        "hash this cookie's value (the application's own cookie: it passes upstream)",
    )


@dataclass(frozen=True)
class Affinity:
    """Session affinity (docs/affinity.md): exactly one of `cookie` or `hash`. A
    request without the key, or whose host is out of rotation, tried or full,
    is balanced by the strategy."""

    cookie: AffinityCookie | None = setting(None, AffinityCookie, "cookie insert")
    hash: AffinityHash | None = setting(None, AffinityHash, "consistent hashing")


def affinity(value: Any, where: str) -> Affinity | None:
    """A whole block: a service's ``affinity`` replaces the one of proxy.defaults
    (merging a default ``cookie`` with a service's ``hash`` would give both);
    ``null`` turns off the default's."""
    if value is None:
        return None
    if isinstance(value, dict) and "cookie" in value and value["cookie"] is None:
        value = {**value, "cookie": {}}  # `cookie:` with nothing: all its defaults
    chosen = block(Affinity, value, where)
    if (chosen.cookie is None) == (chosen.hash is None):
        raise ConfigError(where, "expected exactly one of cookie or hash")
    if chosen.hash is not None and (chosen.hash.header is None) == (chosen.hash.cookie is None):
        raise ConfigError(f"{where}.hash", "expected exactly one of header or cookie")
    return chosen


affinity.block = Affinity  # documented as a block (app/config_reference.py)


def srv_name(value: Any, where: str) -> str:
    """An SRV owner name such as ``_http._tcp.web.svc.cluster.local``."""
    labels = value.lower().rstrip(".").split(".") if isinstance(value, str) else []
    if len(labels) < 3 or not all(label.startswith("_") for label in labels[:2]):
        raise ConfigError(
            where, f"expected an SRV name such as _http._tcp.web.internal, got {_describe(value)}"
        )
    if not is_hostname(".".join([label.lstrip("_") for label in labels[:2]] + labels[2:])):
        raise ConfigError(where, f"not a DNS name: {_describe(value)}")
    return value.lower().rstrip(".")


@dataclass(frozen=True)
class Host:
    """One upstream host of a service; each is listed once. With `resolve: true`
    the entry is a DNS name whose every address is a host (docs/discovery.md)."""

    address: str = setting(
        None,
        address,
        "IPv4/IPv6 literal or DNS name (a Kubernetes Service); required unless `srv`",
    )
    port: int = setting(None, port, "1-65535; required unless `srv`")
    weight: int = setting(1, integer(1, 1000), "share of the traffic, for every strategy")
    resolve: bool = setting(
        False,
        boolean,
        "re-resolve `address` while serving: every address of its answer is a host (never"
        " on an IP literal)",
    )
    srv: str | None = setting(
        None,
        optional(srv_name),
        "with `resolve: true` instead of `address` and `port`: hosts and ports from these"
        " SRV records",
    )

    # Hosts key the dicts every request looks up (in flight, health), and name
    # it in metrics and the log: both are worked out once per host, not per request.
    @functools.cached_property
    def name(self) -> str:
        return self.srv or f"{self.address}:{self.port}"

    @functools.cached_property
    def _hash(self) -> int:
        return hash((self.address, self.port, self.weight, self.resolve, self.srv))

    def __hash__(self) -> int:  # dataclass keeps an explicit __hash__ (frozen, eq)
        return self._hash


def host_entry(value: Any, where: str) -> Host:
    host = block(Host, value, where)
    if host.srv is not None:
        for key in ("address", "port"):
            if getattr(host, key) is not None:
                raise ConfigError(f"{where}.{key}", "an srv entry takes hosts and ports from DNS")
        if not host.resolve:
            raise ConfigError(f"{where}.resolve", "an srv entry needs resolve: true")
        return host
    for key in ("address", "port"):
        if getattr(host, key) is None:
            raise ConfigError(f"{where}.{key}", "required key is missing")
    if host.resolve and is_ip(host.address):
        raise ConfigError(
            f"{where}.resolve", f"{host.address} is an IP address: there is nothing to resolve"
        )
    return host


def limit_key(value: Any, where: str) -> str:
    """``client_ip``, ``service`` or ``header:NAME`` (a header the client sets itself)."""
    if value in ("client_ip", "service"):
        return value
    if isinstance(value, str) and value.startswith("header:"):
        name = hash_header(value[len("header:") :], where)
        if name.lower().startswith("x-forwarded-"):
            raise ConfigError(
                where,
                f"{name} is rewritten by the proxy (and spoofable): key by client_ip, with"
                " proxy.trusted_proxies, instead",
            )
        return value
    raise ConfigError(where, f"expected client_ip, service or header:NAME, got {_describe(value)}")


scope = one_of(("local", "global"))


@dataclass(frozen=True)
class RateLimit:
    """Requests per second per key (docs/ratelimit.md): GCRA, as nginx's `limit_req
    ... burst=N nodelay`; beyond it `429` with `Retry-After`."""

    rate: float = setting(None, number(0.001, 10**6), "requests per second", required=True)
    burst: int = setting(
        0, integer(0, 10**6), "extra requests at once: after an idle moment, `burst + 1` pass"
    )
    key: str = setting(
        "client_ip",
        limit_key,
        "`client_ip` (the peer, or `X-Forwarded-For` from `proxy.trusted_proxies`),"
        " `service` (one bucket), or `header:NAME` (the client IP without it)",
    )
    scope: str = setting(
        "local",
        scope,
        "`local` (this proxy's pod) or `global` (every replica, through `proxy.redis`)",
    )


@dataclass(frozen=True)
class Policy:
    """What a service may set, and `proxy.defaults` sets for all of them, key by key."""

    strategy: str = setting(
        "round_robin",
        strategy,
        "`round_robin` (smooth weighted, as nginx), `random` (weighted), `least_connections`"
        " (in flight ÷ weight; ties round robin)",
    )
    timeout: Timeout = setting(Timeout(), Timeout, "time limits")
    retry: Retry = setting(Retry(), Retry, "retries on another host")
    outlier: Outlier = setting(Outlier(), Outlier, "passive health")
    health_check: HealthCheck | None = setting(None, HealthCheck, "active health checks")
    upstream_tls: UpstreamTLS | None = setting(None, UpstreamTLS, "https to the hosts")
    affinity: Affinity | None = setting(
        None, affinity, "session affinity: `cookie` or `hash`; a service's replaces the default"
    )
    max_in_flight: int | None = setting(
        None,
        optional(integer(1, 10**6)),
        "circuit breaker: requests in flight for the service, counted over all the pod's"
        " workers; beyond it `503` with `Retry-After: 1`",
    )
    rate_limit: RateLimit | None = setting(None, RateLimit, "rate limiting per key")
    max_tunnels: int | None = setting(
        None,
        optional(integer(1, 10**6)),
        "WebSocket tunnels open at once for the service, per worker; beyond it `503` with"
        " `Retry-After: 1` (plain requests are served whatever the tunnels do)",
    )
    max_in_flight_per_host: int | None = setting(
        None,
        optional(integer(1, 10**6)),
        "the same, per host (pod-wide): a full host is skipped; all full gives `503`",
    )


def hosts(value: Any, where: str) -> tuple[Host, ...]:
    items = _list(value, where)
    passed = _passing(items, where, host_entry)
    for index, first in _repeats({i: host.name for i, host in passed.items()}):
        _note(ConfigError(
            f"{where}[{index}]",
            f"{passed[index].name} is already listed as {where}[{first}] (use weight instead)",
        ))  # fmt: skip
    return _complete(passed, items)


@dataclass(frozen=True, kw_only=True)
class Service(Policy):
    """A routed service: any key of `proxy.defaults` may be set here too."""

    name: str = setting(None, name, "unique name (logs, metrics, `/status`)", required=True)
    domain: str = setting(
        None,
        domain,
        "unique DNS name matched against `Host`: case-insensitive, port and final dot ignored",
        required=True,
    )
    hosts: tuple[Host, ...] = setting((), hosts, "upstream hosts, at least one", required=True)
    # The `resolve: true` entries of `hosts`, taken out of it when the file is read:
    # ``hosts`` holds the fixed hosts, these the names whose addresses are hosts.
    discover: tuple[Host, ...] = ()


def nameservers(value: Any, where: str) -> tuple[tuple[str, int], ...]:
    """``["10.96.0.10", "127.0.0.1:5353", "[::1]:53"]`` -> ((address, port), ...)."""
    if not isinstance(value, list):
        raise ConfigError(where, f"expected a list of IP or IP:port, got {_describe(value)}")
    servers = []
    for i, item in enumerate(value):
        text = item if isinstance(item, str) else ""
        if text.startswith("["):
            ip, _, rest = text[1:].partition("]")
            port_text = rest[1:] if rest.startswith(":") else (None if not rest else "x")
        elif text.count(":") == 1:
            ip, port_text = text.split(":")
        else:
            ip, port_text = text, None
        if not is_ip(ip) or (port_text is not None and not port_text.isdigit()):
            raise ConfigError(
                f"{where}[{i}]", f"expected IP, IP:port or [IPv6]:port, got {_describe(item)}"
            )
        servers.append((ip, port(int(port_text) if port_text else 53, f"{where}[{i}]")))
    return tuple(servers)


family = one_of(("ipv4", "ipv6", "any"))


@dataclass(frozen=True)
class Resolver:
    """DNS for hosts with `resolve: true` (docs/discovery.md): one lookup loop per
    pod, never in the request path."""

    nameservers: tuple[tuple[str, int], ...] = setting(
        (),
        nameservers,
        "each `IP`, `IP:port` or `[IPv6]:port` (port 53 by default), tried in order; none:"
        " the nameservers and search list of /etc/resolv.conf",
    )
    refresh: float = setting(
        5.0,
        number(1, 3600),
        "the most seconds between lookups of a name; a shorter TTL wins, down to 1 s",
    )
    family: str = setting("ipv4", family, "`ipv4` (A records), `ipv6` (AAAA) or `any` (both)")


def redis_url(value: Any, where: str) -> str:
    if not isinstance(value, str) or not re.match(r"(rediss?|unix)://", value):
        raise ConfigError(
            where, f"expected a URL such as redis://host:6379/0, got {_describe(value)}"
        )
    from redis.connection import parse_url  # the parse every worker's client will make

    try:
        parse_url(value)
    except ValueError as error:
        raise ConfigError(where, f"not a Redis URL ({error})") from None
    return value


@dataclass(frozen=True)
class Redis:
    """The Redis that `scope: global` rate limits share (docs/ratelimit.md)."""

    url: str = setting(
        None, redis_url, "`redis://host:6379/0` (`rediss://` for TLS)", required=True
    )
    timeout: float = setting(
        0.05,
        number(0.001, 10),
        "seconds to connect and for each answer; no retries (a failure fails open)",
    )


def networks(value: Any, where: str) -> tuple:
    if not isinstance(value, list):
        raise ConfigError(where, f"expected a list of CIDRs, got {_describe(value)}")
    return _each(value, where, _network)


def _network(item: Any, where: str):
    with contextlib.suppress(ValueError):
        if isinstance(item, str):  # ip_network(10) would be 0.0.0.10/32
            return ipaddress.ip_network(item, strict=False)
    raise ConfigError(where, f"expected a CIDR such as 10.0.0.0/8, got {_describe(item)}")


@dataclass(frozen=True)
class ProxyConfig:
    services: tuple[Service, ...]
    listeners: tuple[Listen, ...] = (Listen(),)
    admin: Admin = Admin()
    limits: Limits = Limits()
    defaults: Policy = Policy()
    statsd: Statsd = Statsd()
    source: str = "<memory>"
    resolver: Resolver = Resolver()
    redis: Redis | None = None
    trusted_proxies: tuple = ()  # ipaddress networks whose X-Forwarded-For is believed
    prometheus: bool = True  # GET /metrics on the admin listener (docs/observability.md)

    @property
    def listen(self) -> Listen:
        """The first listener (the only one of the original schema)."""
        return self.listeners[0]

    @property
    def hosts(self) -> frozenset[Host]:
        return frozenset(host for service in self.services for host in service.hosts)


# --- loading ---------------------------------------------------------------


def config_path() -> Path:
    """The file named by $PROXY_CONFIG, else proxy.yaml at the repo root in a
    checkout, else (an installed lbproxy) proxy.yaml in the working directory."""
    if named := os.environ.get("PROXY_CONFIG"):
        return Path(named)
    return DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.is_file() else Path("proxy.yaml")


def read_yaml(text: str) -> Any:
    """The YAML document of ``text``; ConfigError where it is not valid YAML."""
    # Imported here: the gunicorn master parses in a child process
    # (app/process/master.read_yaml_apart), so that PyYAML is never resident in
    # the master, nor in the workers it forks.
    import yaml

    # libyaml's loader when PyYAML has it: a 10,000-service file parses in a
    # tenth of the time and memory (safe either way: plain YAML types only).
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        return yaml.load(text, Loader=loader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(file)"
        problem = getattr(error, "problem", None) or str(error)
        raise ConfigError(where, f"not valid YAML ({problem})") from None


ReadYaml = Callable[[str], Any]


def load_config(path: str | os.PathLike | None = None, read: ReadYaml = read_yaml) -> ProxyConfig:
    path = Path(path) if path is not None else config_path()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError("(file)", f"cannot read it ({error.strerror})") from None
    return parse_config(text, source=str(path), read=read)


def parse_config(text: str, source: str = "<memory>", read: ReadYaml = read_yaml) -> ProxyConfig:
    base = Path(source).parent if source != "<memory>" else Path.cwd()
    token = _BASE_DIRECTORY.set(base)
    try:
        return _parse(text, source, read)
    finally:
        _BASE_DIRECTORY.reset(token)


def _parse(text: str, source: str, read: ReadYaml) -> ProxyConfig:
    found: list[ConfigError] = []
    token = _PROBLEMS.set(found)
    try:
        config = _attempt(_document, text, source, read)
    finally:
        _PROBLEMS.reset(token)
    if len(found) > 1:
        raise ConfigErrors(found)
    if found:
        raise found[0]
    return config


def _document(text: str, source: str, read: ReadYaml) -> ProxyConfig:
    root = _mapping(read(text), "(top level)", required={"proxy"})
    if "proxy" not in root:
        raise _Reported  # _mapping recorded it
    return _proxy(root["proxy"], "proxy", source)


_PROXY_KEYS = {
    "listen", "admin", "limits", "defaults", "statsd", "resolver", "redis", "trusted_proxies",
    "prometheus",
}  # fmt: skip


def _proxy(value: Any, where: str, source: str) -> ProxyConfig:
    data = _mapping(value, where, required={"services"}, optional=_PROXY_KEYS)
    before = _recorded()
    admin = _attempt(block, Admin, data.get("admin"), f"{where}.admin")
    listeners = _attempt(_listeners, data.get("listen"), f"{where}.listen", admin)
    defaults = _attempt(block, Policy, data.get("defaults"), f"{where}.defaults")
    services = _proxy_services(data, where, defaults)
    redis = _optional(Redis, data.get("redis"), f"{where}.redis")
    trusted = ()
    if data.get("trusted_proxies") is not None:
        trusted = _attempt(networks, data["trusted_proxies"], f"{where}.trusted_proxies")
    config = ProxyConfig(
        services=services,
        listeners=listeners,
        admin=admin,
        limits=_attempt(block, Limits, data.get("limits"), f"{where}.limits"),
        defaults=defaults,
        statsd=_attempt(block, Statsd, data.get("statsd"), f"{where}.statsd"),
        source=source,
        resolver=_attempt(block, Resolver, data.get("resolver"), f"{where}.resolver"),
        redis=redis,
        trusted_proxies=trusted,
        prometheus=_attempt(boolean, data.get("prometheus", True), f"{where}.prometheus"),
    )
    if _recorded() > before:
        raise _Reported
    return config


def _optional(kind: type, value: Any, where: str):
    return None if value is None else _attempt(block, kind, value, where)


def _proxy_services(data: dict, where: str, defaults: Policy | object) -> tuple | object:
    """The services, each read even when proxy.defaults failed (against the
    schema's defaults then), and checked against proxy.redis."""
    if "services" not in data:
        return FAILED  # reported by _mapping
    base = Policy() if defaults is FAILED else defaults
    items = _attempt(_list, data["services"], f"{where}.services")
    if items is FAILED:
        return FAILED
    passed = _passing(items, f"{where}.services", _service, base)
    for attribute in ("domain", "name"):
        _unique(passed, attribute, f"{where}.services")
    if data.get("redis") is None:
        known = None if defaults is FAILED else defaults  # a failed one is reported already
        _attempt(_global_needs_redis, tuple(passed.items()), known, where)
    return _attempt(_complete, passed, items)  # FAILED when one did not pass


def _ports_apart(admin: Admin, listeners: dict[int, Listen], where: str, single: bool) -> None:
    """The admin port is none of the listeners' (those that passed their checks)."""
    proxy = where.rsplit(".", 1)[0]
    for index, listen in listeners.items():
        if admin.port == listen.port:
            place = where if single else f"{where}[{index}]"
            _note(ConfigError(f"{proxy}.admin.port", f"must differ from {place}.port"))


def _global_needs_redis(
    services: tuple[tuple[int, Service], ...], defaults: Policy | None, where: str
) -> None:
    """``scope: global`` shares buckets through ``proxy.redis``: both or neither."""
    places = [(f"{where}.defaults", defaults)] if defaults is not None else []
    places += [(f"{where}.services[{i}]", service) for i, service in services]
    for place, policy in places:
        if policy.rate_limit is not None and policy.rate_limit.scope == "global":
            _note(ConfigError(
                f"{place}.rate_limit.scope",
                f"global needs {where}.redis (its url): the replicas share their buckets there",
            ))  # fmt: skip
            return


def _listeners(value: Any, where: str, admin: Admin | object = FAILED) -> tuple[Listen, ...]:
    """``listen``: one mapping (the original schema), or a list of them; none may
    take the admin port."""
    single = not isinstance(value, list)
    if single:  # its problems are named without an index
        items = [value]
        listen = _attempt(block, Listen, value, where)
        passed = {} if listen is FAILED else {0: listen}
    else:
        items = _list(value, where)
        passed = _passing(items, where, lambda item, place: block(Listen, item, place))
    for index, first in _repeats({i: listen.port for i, listen in passed.items()}):
        _note(ConfigError(
            f"{where}[{index}].port", f"{passed[index].port} is already used by {where}[{first}]"
        ))  # fmt: skip
    if admin is not FAILED:
        _ports_apart(admin, passed, where, single)
    return _complete(passed, items)


def block(kind: type, value: Any, where: str, inherited: Any = None):
    """Read one mapping into the dataclass ``kind``, checking each field.

    A key left out takes its value from ``inherited`` (proxy.defaults for a
    service), else the field's default; a required key must be there.
    Nested blocks inherit key by key.
    """
    fields = {f.name: f for f in dataclasses.fields(kind) if "check" in f.metadata}
    required = {name for name, spec in fields.items() if spec.metadata["required"]}
    before = _recorded()
    data = _mapping(value, where, required=required, optional=set(fields) - set(required))
    values = {}
    for key, spec in fields.items():
        check = spec.metadata["check"]
        base = getattr(inherited, key, spec.default)
        if key not in data:
            values[key] = base
        elif not dataclasses.is_dataclass(check):
            values[key] = _attempt(check, data[key], f"{where}.{key}")
        elif data[key] is None and spec.default is None:
            values[key] = None  # an optional block, turned off here
        else:
            values[key] = _attempt(block, check, data[key], f"{where}.{key}", base)
    if _recorded() > before:
        raise _Reported  # the problems are recorded; the block is not built
    return kind(**values)


def _service(value: Any, where: str, defaults: Policy) -> Service:
    service = block(Service, value, where, defaults)
    fixed = tuple(host for host in service.hosts if not host.resolve)
    if len(fixed) == len(service.hosts):
        return service
    discover = tuple(host for host in service.hosts if host.resolve)
    return dataclasses.replace(service, hosts=fixed, discover=discover)


def _did_you_mean(key: str, allowed: set) -> str:
    # Imported here, for a file with a typo: the gunicorn master (whose modules
    # RSS counts again in every worker) has no other use for difflib.
    import difflib

    hint = difflib.get_close_matches(key, allowed, n=1)
    return f" (did you mean '{hint[0]}'?)" if hint else ""


def _mapping(value: Any, where: str, required=frozenset(), optional=frozenset()) -> dict:
    allowed = set(required) | set(optional)
    if value is None and not required:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(where, f"expected a mapping, got {_describe(value)}")
    for key in value:
        if key not in allowed:
            suggestion = _did_you_mean(str(key), allowed)
            known = ", ".join(sorted(allowed))
            _note(ConfigError(f"{where}.{key}", f"unknown key{suggestion}; known keys: {known}"))
    for key in sorted(required):
        if key not in value:
            _note(ConfigError(f"{where}.{key}", "required key is missing"))
    return value


def _list(value: Any, where: str) -> list:
    if not isinstance(value, list):
        raise ConfigError(where, f"expected a list, got {_describe(value)}")
    if not value:
        raise ConfigError(where, "must not be empty")
    return value


def _unique(services: dict[int, Service], attribute: str, where: str) -> None:
    values = {i: getattr(service, attribute) for i, service in services.items()}
    for index, first in _repeats(values):
        place = f"{where}[{index}].{attribute}"
        _note(ConfigError(place, f"'{values[index]}' is already used by {where}[{first}]"))
