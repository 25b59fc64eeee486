"""DNS discovery: a host entry with ``resolve: true`` is a name whose every address is a host.

Like Envoy's ``STRICT_DNS``, HAProxy's ``resolvers`` with ``server-template``
and nginx's ``server ... resolve``, lbproxy re-resolves such names in the
background and never in the request path: a slow or dead DNS server adds
nothing to a request.

- One ``Discovery`` loop per pod runs in the prober worker (the one holding
  app/traffic/shared.ProberLock). It looks each name up with dnspython (pure
  Python, cooperative under gevent's monkey-patching, and it reports TTLs and
  takes a nameserver port, which gevent's resolvers do not), every
  ``resolver.refresh`` seconds or sooner when the TTL is shorter (down to 1 s).
- It writes each name's answer to the name's record in the shared area
  (``NameRecord``). Each address keeps a *position* in the name's block of host
  slots while it stays in the answer, and with it its health and in-flight
  counts. Every worker's route reads the record when its sequence moves and
  rebuilds its host list (app/traffic/routing.py).
- A removed address takes no new requests. Requests already in flight to it
  finish. Its position is taken again only once nothing is in flight to it,
  and with its health words zeroed, so a reused IP starts clean.
- A failed lookup (timeout, SERVFAIL) keeps the last good set and counts as a
  DNS error; ten in a row are logged. NXDOMAIN or an empty answer keeps the
  last good set for ``HOLD_NX`` seconds (HAProxy's ``hold nx``), then empties
  it, and the service answers 503 until the name resolves again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from app.config import Host, ProxyConfig, Resolver, Service
from app.traffic.shared import ADDRESSES, NameRecord, Zone

log = logging.getLogger("gunicorn.error")

HOLD_NX = 30.0  # seconds an NXDOMAIN or empty answer keeps the last good set
# Seconds a removed address's position rests before another address takes it:
# a worker that has not taken the removal in yet (it does on its next request
# to the service) must not count a new address's failures as the old one's.
QUARANTINE = 10.0
LOG_AFTER = 10  # failed lookups in a row before it is logged
MIN_REFRESH = 1.0
DNS_TIMEOUT = 1.0  # per nameserver try
DNS_LIFETIME = 2.0  # per lookup, every nameserver and retry included

RDTYPES = {"ipv4": ("A",), "ipv6": ("AAAA",), "any": ("A", "AAAA")}


class LookupFailed(Exception):
    """A lookup without an answer; ``kind``: timeout, servfail, nxdomain, empty, error."""

    def __init__(self, kind: str, detail: str = ""):
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


@dataclass
class Answer:
    addresses: list[tuple[str, int]]  # (IP, port), in the order of the answer
    ttl: float


class Dns:
    """Lookups with dnspython, as ``proxy.resolver`` says."""

    def __init__(self, settings: Resolver):
        import dns.nameserver
        import dns.resolver

        self.resolver = dns.resolver.Resolver(configure=not settings.nameservers)
        if settings.nameservers:
            self.resolver.nameservers = [
                dns.nameserver.Do53Nameserver(ip, port) for ip, port in settings.nameservers
            ]
        self.resolver.timeout = DNS_TIMEOUT
        self.resolver.lifetime = DNS_LIFETIME
        self.rdtypes = RDTYPES[settings.family]

    def lookup(self, entry: Host) -> Answer:
        if entry.srv is None:
            addresses, ttl = self._addresses(entry.address)
            return Answer([(ip, entry.port) for ip in addresses], ttl)
        records = self._query(entry.srv, "SRV")
        found, ttl = [], records.rrset.ttl
        for record in sorted(records, key=lambda r: (r.priority, -r.weight)):
            target = record.target.to_text()  # absolute: no search list applies
            try:
                addresses, target_ttl = self._addresses(target)
            except LookupFailed as failure:
                if failure.kind not in ("nxdomain", "empty"):
                    raise
                continue  # a target without addresses serves nothing
            found += [(ip, record.port) for ip in addresses]
            ttl = min(ttl, target_ttl)
        if not found:
            raise LookupFailed("empty", f"no SRV target of {entry.srv} has an address")
        return Answer(found, ttl)

    def _addresses(self, name: str) -> tuple[list[str], float]:
        addresses, ttls, empty = [], [], None
        for rdtype in self.rdtypes:
            try:
                answer = self._query(name, rdtype)
            except LookupFailed as failure:
                if failure.kind != "empty":
                    raise
                empty = failure
                continue
            addresses += [record.address for record in answer]
            ttls.append(answer.rrset.ttl)
        if not addresses:
            raise empty or LookupFailed("empty", name)
        return addresses, min(ttls)

    def _query(self, name: str, rdtype: str):
        import dns.exception
        import dns.resolver

        try:
            return self.resolver.resolve(name, rdtype, search=True)
        except dns.resolver.NXDOMAIN:
            raise LookupFailed("nxdomain", name) from None
        except dns.resolver.NoAnswer:
            raise LookupFailed("empty", f"{name} has no {rdtype} record") from None
        except dns.resolver.NoNameservers as error:
            raise LookupFailed("servfail", str(error)) from None
        except dns.exception.Timeout:
            raise LookupFailed("timeout", name) from None
        except dns.exception.DNSException as error:
            raise LookupFailed("error", str(error)) from None


@dataclass
class Name:
    """One ``resolve: true`` entry, as the prober's loop keeps it."""

    service: Service
    entry: Host
    record: NameRecord
    positions: dict[tuple[str, int], int] = field(default_factory=dict)  # (IP, port) -> position
    due: float = 0.0  # time.monotonic() of the next lookup
    version: int = 0  # bumped when the set of addresses changes
    failures: int = 0  # failed lookups in a row
    lookups: int = 0
    errors: int = 0
    empty_since: float | None = None  # first NXDOMAIN or empty answer of a run of them
    freed: dict[int, float] = field(default_factory=dict)  # position -> when it was freed
    busy: bool = False  # a lookup is under way
    overflow_logged: bool = False
    ttl: float | None = None
    error: str | None = None
    resolved_at: float | None = None  # wall time of the last answer


class Discovery:
    """The pod's lookup loop (in the prober worker): every name, when it is due."""

    def __init__(
        self,
        config: ProxyConfig,
        zone: Zone,
        dns: Dns | None = None,
        on_lookup: Callable[[str, bool], None] = lambda service, ok: None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.refresh = config.resolver.refresh
        self.dns = dns or Dns(config.resolver)
        self.zone = zone
        self.on_lookup = on_lookup  # (service name, answered): metrics
        self.clock = clock
        self.names = [
            self._adopt(Name(service, entry, zone.name(service, entry)))
            for service in config.services
            for entry in service.discover
        ]

    def _adopt(self, name: Name) -> Name:
        """Carry on from the record a previous prober left (positions, version)."""
        read = name.record.read()
        if read is None:
            # Never written, or left half-written by a prober that died: start
            # from a version no worker can have cached.
            name.version = time.time_ns() // 1000 if name.record.sequence else 0
            return name
        document = read[1]
        name.positions = {(ip, port): position for ip, port, position in document["hosts"]}
        name.version = document["version"]
        name.lookups, name.errors = document["lookups"], document["errors"]
        name.empty_since = document.get("empty_since")
        return name

    def run(self) -> None:
        """Each name's lookup in a greenlet of its own, so a slow name delays no other."""
        import gevent

        while True:
            now = self.clock()
            for name in self.names:
                if name.due <= now and not name.busy:
                    name.busy = True
                    gevent.spawn(self._resolve_safely, name)
            wake = min((name.due for name in self.names), default=now + self.refresh)
            gevent.sleep(min(max(wake - self.clock(), 0.05), self.refresh))

    def _resolve_safely(self, name: Name) -> None:
        try:
            self.resolve(name)
        except Exception:  # a bug must not stop discovery for good: next time
            log.exception("lbproxy: %s: lookup of %s", name.service.name, name.entry.name)
            name.due = self.clock() + self.refresh
        finally:
            name.busy = False

    def resolve(self, name: Name) -> None:
        """One lookup of ``name``, its result written to its record."""
        now = self.clock()
        name.lookups += 1
        try:
            answer = self.dns.lookup(name.entry)
        except LookupFailed as failure:
            self._failed(name, failure, now)
        else:
            name.failures, name.error, name.empty_since = 0, None, None
            name.ttl = answer.ttl
            name.resolved_at = time.time()
            self._place(name, answer.addresses)
            name.due = now + min(max(answer.ttl, MIN_REFRESH), self.refresh)
            self.on_lookup(name.service.name, True)
        self._write(name)

    def _failed(self, name: Name, failure: LookupFailed, now: float) -> None:
        name.errors += 1
        name.failures += 1
        name.error = failure.kind
        name.due = now + self.refresh
        self.on_lookup(name.service.name, False)
        if failure.kind in ("nxdomain", "empty"):
            if name.empty_since is None:
                name.empty_since = now
            if now - name.empty_since >= HOLD_NX or not name.positions:
                self._place(name, [])
            else:  # look again when the hold ends, if not before
                name.due = min(name.due, name.empty_since + HOLD_NX)
        if name.failures == LOG_AFTER:
            log.warning(
                "lbproxy: %s: %d lookups of %s in a row failed (%s); keeping %d addresses",
                name.service.name,
                LOG_AFTER,
                name.entry.name,
                failure,
                len(name.positions),
            )

    def _place(self, name: Name, addresses: list[tuple[str, int]]) -> None:
        """Keep the positions of the addresses that stay; give the new ones free
        positions nothing is in flight to, their health words zeroed."""
        wanted = list(dict.fromkeys(addresses))  # in order, each once
        kept = {address: name.positions[address] for address in wanted if address in name.positions}
        now = self.clock()
        for address, position in name.positions.items():
            if address not in kept:
                name.freed[position] = now
        taken = set(kept.values())
        first, area = name.record.first_host, self.zone.area
        free = (
            position
            for position in range(ADDRESSES)
            if position not in taken
            and now - name.freed.get(position, -QUARANTINE) >= QUARANTINE
            and area.host_in_flight(first + position) == 0
        )
        for address in wanted:
            if address in kept:
                continue
            position = next(free, None)
            if position is None:
                if not name.overflow_logged:
                    name.overflow_logged = True
                    log.warning(
                        "lbproxy: %s: %s has more addresses than the %d positions free"
                        " (removed ones rest %.0f s first): %s and others left out for now",
                        name.service.name,
                        name.entry.name,
                        ADDRESSES,
                        QUARANTINE,
                        address[0],
                    )
                continue
            area.zero_host(first + position)
            name.freed.pop(position, None)
            kept[address] = position
        if kept != name.positions:
            name.version += 1
            name.positions = kept

    def _write(self, name: Name) -> None:
        name.record.write(
            {
                "version": name.version,
                "hosts": [[ip, port, position] for (ip, port), position in name.positions.items()],
                "resolved_at": name.resolved_at,
                "ttl": name.ttl,
                "error": name.error,
                "failures": name.failures,
                "lookups": name.lookups,
                "errors": name.errors,
                "empty_since": name.empty_since,
            }
        )
