"""The proxy.yaml schema: read once, validated, frozen.

Every key the proxy understands is declared here and nowhere else. Loading
produces immutable dataclasses; any problem raises ConfigError naming the exact
place in the file (``proxy.services[1].hosts[0].port``) and the reason, so a
user can fix the file without reading this code.

The original project's schema (listen, services with name/domain/hosts) is
accepted unchanged; everything else is optional with the defaults below.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG_PATH = REPO_ROOT / "proxy.yaml"

STRATEGIES = ("round_robin", "random", "least_connections")

DEFAULT_STRATEGY = "round_robin"
DEFAULT_CONNECT_TIMEOUT = 2.0
DEFAULT_READ_TIMEOUT = 30.0
# Below gunicorn's default keep-alive (2 s), so a pooled connection is dropped
# by us before the upstream closes it under our feet.
DEFAULT_IDLE_TIMEOUT = 1.5
DEFAULT_LISTEN_ADDRESS = "0.0.0.0"
DEFAULT_LISTEN_PORT = 8080
DEFAULT_ADMIN_PORT = 9901

_HOSTNAME_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")


class ConfigError(ValueError):
    """A proxy.yaml problem: ``where`` is the key path, ``reason`` what is wrong."""

    def __init__(self, where: str, reason: str):
        super().__init__(f"{where}: {reason}")
        self.where = where
        self.reason = reason


@dataclass(frozen=True)
class Listen:
    address: str = DEFAULT_LISTEN_ADDRESS
    port: int = DEFAULT_LISTEN_PORT


@dataclass(frozen=True)
class Admin:
    address: str = DEFAULT_LISTEN_ADDRESS
    port: int = DEFAULT_ADMIN_PORT


@dataclass(frozen=True)
class Timeout:
    connect: float = DEFAULT_CONNECT_TIMEOUT
    read: float = DEFAULT_READ_TIMEOUT
    idle: float = DEFAULT_IDLE_TIMEOUT


@dataclass(frozen=True)
class Host:
    address: str
    port: int
    weight: int = 1

    @property
    def name(self) -> str:
        return f"{self.address}:{self.port}"


@dataclass(frozen=True)
class Service:
    name: str
    domain: str
    hosts: tuple[Host, ...]
    strategy: str = DEFAULT_STRATEGY
    timeout: Timeout = field(default_factory=Timeout)


@dataclass(frozen=True)
class Defaults:
    strategy: str = DEFAULT_STRATEGY
    timeout: Timeout = field(default_factory=Timeout)


@dataclass(frozen=True)
class ProxyConfig:
    services: tuple[Service, ...]
    listen: Listen = field(default_factory=Listen)
    admin: Admin = field(default_factory=Admin)
    defaults: Defaults = field(default_factory=Defaults)
    source: str = "<memory>"

    @property
    def hosts(self) -> frozenset[Host]:
        return frozenset(host for service in self.services for host in service.hosts)


# --- loading ---------------------------------------------------------------


def config_path() -> Path:
    """The file named by $PROXY_CONFIG, else proxy.yaml at the repo root."""
    return Path(os.environ.get("PROXY_CONFIG") or DEFAULT_CONFIG_PATH)


def load_config(path: str | os.PathLike | None = None) -> ProxyConfig:
    path = Path(path) if path is not None else config_path()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError("(file)", f"cannot read it ({error.strerror})") from None
    return parse_config(text, source=str(path))


def parse_config(text: str, source: str = "<memory>") -> ProxyConfig:
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(file)"
        problem = getattr(error, "problem", None) or str(error)
        raise ConfigError(where, f"not valid YAML ({problem})") from None
    root = _mapping(document, "(top level)", required={"proxy"})
    return _proxy(root["proxy"], "proxy", source)


# --- schema ----------------------------------------------------------------


def _proxy(value: Any, where: str, source: str) -> ProxyConfig:
    data = _mapping(value, where, required={"services"}, optional={"listen", "admin", "defaults"})
    defaults = _defaults(data.get("defaults", {}), f"{where}.defaults")
    listen = _listener(data.get("listen", {}), f"{where}.listen", Listen)
    admin = _listener(data.get("admin", {}), f"{where}.admin", Admin)
    if admin.port == listen.port:
        raise ConfigError(f"{where}.admin.port", f"must differ from {where}.listen.port")
    services = _services(data["services"], f"{where}.services", defaults)
    return ProxyConfig(services, listen, admin, defaults, source)


def _listener(value: Any, where: str, kind: type[Listen] | type[Admin]):
    data = _mapping(value, where, optional={"address", "port"})
    return kind(
        address=_address(data.get("address", kind.address), f"{where}.address"),
        port=_port(data.get("port", kind.port), f"{where}.port"),
    )


def _defaults(value: Any, where: str) -> Defaults:
    data = _mapping(value, where, optional={"strategy", "timeout"})
    return Defaults(
        strategy=_strategy(data.get("strategy", DEFAULT_STRATEGY), f"{where}.strategy"),
        timeout=_timeout(data.get("timeout", {}), f"{where}.timeout", Timeout()),
    )


def _services(value: Any, where: str, defaults: Defaults) -> tuple[Service, ...]:
    items = _list(value, where)
    services = tuple(_service(item, f"{where}[{i}]", defaults) for i, item in enumerate(items))
    _unique(services, "domain", where)
    _unique(services, "name", where)
    return services


def _service(value: Any, where: str, defaults: Defaults) -> Service:
    data = _mapping(
        value, where, required={"name", "domain", "hosts"}, optional={"strategy", "timeout"}
    )
    hosts = _hosts(data["hosts"], f"{where}.hosts")
    return Service(
        name=_name(data["name"], f"{where}.name"),
        domain=_domain(data["domain"], f"{where}.domain"),
        hosts=hosts,
        strategy=_strategy(data.get("strategy", defaults.strategy), f"{where}.strategy"),
        timeout=_timeout(data.get("timeout", {}), f"{where}.timeout", defaults.timeout),
    )


def _hosts(value: Any, where: str) -> tuple[Host, ...]:
    hosts = tuple(_host(item, f"{where}[{i}]") for i, item in enumerate(_list(value, where)))
    seen: dict[str, int] = {}
    for index, host in enumerate(hosts):
        if host.name in seen:
            raise ConfigError(
                f"{where}[{index}]",
                f"{host.name} is already listed as {where}[{seen[host.name]}] (use weight instead)",
            )
        seen[host.name] = index
    return hosts


def _host(value: Any, where: str) -> Host:
    data = _mapping(value, where, required={"address", "port"}, optional={"weight"})
    return Host(
        address=_address(data["address"], f"{where}.address"),
        port=_port(data["port"], f"{where}.port"),
        weight=_integer(data.get("weight", 1), f"{where}.weight", 1, 1000),
    )


def _timeout(value: Any, where: str, inherited: Timeout) -> Timeout:
    data = _mapping(value, where, optional={"connect", "read", "idle"})
    return Timeout(
        connect=_seconds(data.get("connect", inherited.connect), f"{where}.connect"),
        read=_seconds(data.get("read", inherited.read), f"{where}.read"),
        idle=_seconds(data.get("idle", inherited.idle), f"{where}.idle"),
    )


# --- field checks ----------------------------------------------------------


def _mapping(value: Any, where: str, required=frozenset(), optional=frozenset()) -> dict:
    if value is None and not required:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(where, f"expected a mapping, got {_describe(value)}")
    allowed = set(required) | set(optional)
    for key in value:
        if key not in allowed:
            hint = difflib.get_close_matches(str(key), allowed, n=1)
            suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
            known = ", ".join(sorted(allowed))
            raise ConfigError(f"{where}.{key}", f"unknown key{suggestion}; known keys: {known}")
    for key in sorted(required):
        if key not in value:
            raise ConfigError(f"{where}.{key}", "required key is missing")
    return value


def _list(value: Any, where: str) -> list:
    if not isinstance(value, list):
        raise ConfigError(where, f"expected a list, got {_describe(value)}")
    if not value:
        raise ConfigError(where, "must not be empty")
    return value


def _unique(services: tuple[Service, ...], attribute: str, where: str) -> None:
    seen: dict[str, int] = {}
    for index, service in enumerate(services):
        value = getattr(service, attribute)
        if value in seen:
            raise ConfigError(
                f"{where}[{index}].{attribute}",
                f"'{value}' is already used by {where}[{seen[value]}]",
            )
        seen[value] = index


def _integer(value: Any, where: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(where, f"expected an integer {low}-{high}, got {_describe(value)}")
    return value


def _port(value: Any, where: str) -> int:
    return _integer(value, where, 1, 65535)


def _seconds(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(where, f"expected a positive number of seconds, got {_describe(value)}")
    return float(value)


def _strategy(value: Any, where: str) -> str:
    if value not in STRATEGIES:
        raise ConfigError(where, f"expected one of {', '.join(STRATEGIES)}, got {_describe(value)}")
    return value


def _name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(where, f"expected a non-empty string, got {_describe(value)}")
    return value


def _domain(value: Any, where: str) -> str:
    """A domain is matched against Host headers: lower-case, no port, no dot at the end."""
    if not isinstance(value, str) or not is_hostname(value.lower().rstrip(".")):
        raise ConfigError(
            where, f"expected a DNS name such as api.example.com, got {_describe(value)}"
        )
    return value.lower().rstrip(".")


def _address(value: Any, where: str) -> str:
    """An upstream address: an IPv4/IPv6 literal or a DNS name (a Kubernetes Service, say)."""
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


def _describe(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, (dict, list)):
        return f"a {'mapping' if isinstance(value, dict) else 'list'}"
    return repr(value)
