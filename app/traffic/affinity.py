"""Session affinity: the host a request should stick to, when the service asks for one.

A service's ``affinity`` gives each request a *sticky key*, and the route
(app/traffic/routing.py) asks ``host_for(key, usable)`` for a host before it
balances. ``usable`` says whether a host is in rotation, untried for this
request and not full. With no key, or no usable host for it, the request is
balanced by the service's strategy, as if it had no affinity.

- ``cookie``, cookie insert, as HAProxy's ``cookie SRV insert indirect nocache``
  and NGINX Plus' ``sticky cookie``. The key is the host named by the
  client's affinity cookie. The cookie never reaches the upstream. A response
  from another host than the cookie named (no cookie, a forged one, a
  redispatch, a retry elsewhere) sets a new one.
- ``hash``, consistent hashing of a header or cookie value, as nginx's
  ``hash $x consistent`` and Envoy's ``ring_hash``. The key is a point on a
  ketama ring. A host that is not usable passes its keys to the next host on
  the ring, and only those keys.

Everything is derived from each host's address and port through keyed
BLAKE2b, never from its place in the list or from Python's per-process
``hash()``. So every worker, every replica and every reload agrees: a cookie
issued before a SIGHUP still pins after it, and removing a host moves only its
own keys.
"""

from __future__ import annotations

import bisect
import hashlib
import math
import os
import re
from collections.abc import Callable

from app.config import Affinity, Host, Service

# Points per unit of weight on the ring: ketama's 160 keeps hosts within a few
# percent of their share. Weights count in units of their greatest common
# divisor, and a ring is scaled down to at most MAX_POINTS (weights up to 1000
# would otherwise make millions, seconds to build in every worker).
POINTS_PER_WEIGHT = 160
MAX_POINTS = 64_000
# Keys the cookie values (app/process/settings.py lists it); replicas must agree on it.
KEY_VARIABLE = "PROXY_AFFINITY_KEY"

Usable = Callable[[Host], bool]


def cookie_key() -> bytes:
    secret = os.environ.get(KEY_VARIABLE) or "lbproxy affinity v1"
    return hashlib.sha256(secret.encode()).digest()


def cookie_value(host: Host, key: bytes) -> str:
    """The opaque cookie value naming ``host``: no address or port readable in it."""
    name = f"{host.address}:{host.port}".encode()
    return hashlib.blake2b(name, key=key, digest_size=10, person=b"lbproxy-cookie").hexdigest()


def point(data: bytes) -> int:
    """A place on the ring: a stable 64-bit hash."""
    digest = hashlib.blake2b(data, digest_size=8, person=b"lbproxy-ring").digest()
    return int.from_bytes(digest, "big")


# Cookie pairs are split by ``;`` (RFC 6265 §4.2.1), and by ``,`` too: gunicorn
# joins repeated Cookie fields with one (an HTTP/2 browser sends a field per
# cookie, RFC 9113 §8.2.3), and a cookie value may hold neither.
_SEPARATOR = re.compile(r"([;,])")


def _pairs(value: str) -> list[str]:
    """A Cookie field's pieces and separators: ``a=1; b=2`` -> ``["a=1", ";", " b=2"]``."""
    return _SEPARATOR.split(value)


def _named(piece: str, name: str) -> str | None:
    """The value if ``piece`` is the cookie ``name``, else None."""
    key, equals, value = piece.partition("=")
    if equals and key.strip() == name:
        return value.strip().strip('"')
    return None


def cookie_in(headers: list[tuple[str, str]], name: str) -> str | None:
    """The value of the first cookie ``name`` in the request's Cookie fields, or None."""
    for field, value in headers:
        if field.lower() == "cookie":
            for piece in _pairs(value)[::2]:
                found = _named(piece, name)
                if found is not None:
                    return found
    return None


def take_cookie(headers: list[tuple[str, str]], name: str) -> str | None:
    """Take every cookie ``name`` out of the Cookie fields, leaving every other
    byte as it was; a field left empty goes. Returns the first one's value."""
    first = cookie_in(headers, name)
    if first is None:
        return None
    for index in reversed(range(len(headers))):
        field, value = headers[index]
        if field.lower() != "cookie":
            continue
        parts = _pairs(value)
        kept: list[str] = []  # pieces and the separators before them
        for i in range(0, len(parts), 2):
            if _named(parts[i], name) is None:
                kept += [parts[i - 1], parts[i]] if kept else [parts[i]]
        rest = "".join(kept).strip()
        if not rest:
            del headers[index]
        elif len(kept) != len(parts):
            headers[index] = (field, rest)
    return first


class CookieAffinity:
    def __init__(self, service: Service, key: bytes | None = None):
        settings = service.affinity.cookie
        self.name = settings.name
        self.ttl = settings.ttl
        key = key or cookie_key()
        self.value_of = {host: cookie_value(host, key) for host in service.hosts}
        self.host_of = {value: host for host, value in self.value_of.items()}

    def sticky_key(self, headers: list[tuple[str, str]]) -> tuple[Host | None, str | None]:
        """(the host the cookie names, or None; the value sent), and the cookie taken
        out of ``headers`` (the rest of the Cookie field passes unchanged)."""
        sent = take_cookie(headers, self.name)
        return self.host_of.get(sent) if sent else None, sent

    def host_for(self, host: Host, usable: Usable) -> Host | None:
        return host if usable(host) else None

    def set_cookie(self, host: Host, secure: bool) -> str | None:
        """The Set-Cookie value binding the client to ``host``."""
        parts = [f"{self.name}={self.value_of[host]}", "Path=/", "HttpOnly"]
        if self.ttl is not None:
            parts.append(f"Max-Age={self.ttl}")
        if secure:
            parts.append("Secure")
        return "; ".join(parts)


class HashAffinity:
    """A ketama ring: ``POINTS_PER_WEIGHT`` points per unit of weight per host.

    Removing a host moves only its keys as long as the unit (the weights'
    greatest common divisor) and the scale stay the same: always with equal
    weights, and whenever the ring stays under MAX_POINTS.
    """

    def __init__(self, service: Service):
        settings = service.affinity.hash
        self.header = settings.header.lower() if settings.header else None
        self.cookie = settings.cookie
        unit = math.gcd(*(host.weight for host in service.hosts))
        units = {host: host.weight // unit for host in service.hosts}
        scale = math.ceil(sum(units.values()) * POINTS_PER_WEIGHT / MAX_POINTS)
        ring = sorted(
            (point(f"{host.address}:{host.port}-{i}".encode()), host.address, host.port, host)
            for host in service.hosts
            for i in range(max(1, POINTS_PER_WEIGHT * units[host] // scale))
        )
        self.points = [entry[0] for entry in ring]
        self.ring_hosts = [entry[3] for entry in ring]
        self.host_count = len(service.hosts)

    def sticky_key(self, headers: list[tuple[str, str]]) -> tuple[int | None, None]:
        """(the request's place on the ring, or None without the key; None)."""
        value = None
        if self.header is not None:
            value = next((v for field, v in headers if field.lower() == self.header), None)
        else:
            value = cookie_in(headers, self.cookie)
        if value is None:
            return None, None
        return point(value.encode("latin-1", "replace")), None

    def host_for(self, place: int, usable: Usable) -> Host | None:
        """The first usable host clockwise from ``place``."""
        hosts = self.ring_hosts
        start = bisect.bisect_left(self.points, place)
        seen: set[Host] = set()
        for step in range(len(hosts)):
            host = hosts[(start + step) % len(hosts)]
            if host in seen:
                continue
            if usable(host):
                return host
            seen.add(host)
            if len(seen) == self.host_count:
                break
        return None


def make_affinity(service: Service) -> CookieAffinity | HashAffinity | None:
    affinity: Affinity | None = service.affinity
    if affinity is None:
        return None
    return CookieAffinity(service) if affinity.cookie is not None else HashAffinity(service)
