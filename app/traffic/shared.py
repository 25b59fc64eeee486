"""The pod's shared area: what all workers of a pod know about the upstreams.

nginx keeps an upstream's state in a shared-memory ``zone``; this is the same
idea. The gunicorn master maps one anonymous shared region (``mmap.mmap(-1,
size)``: MAP_SHARED) before it forks, and every worker inherits it. So a host
ejected by one worker is out for all of them, ``least_connections`` and
``max_in_flight`` count the pod's requests, round robin takes turns across
workers, and ``/status`` shows the pod, whichever worker answers.

There are no locks. Every value is one aligned machine word, written whole.
The one value that every worker changes on every request, the count of
requests in flight, has one word per worker (a *column*), summed on read, so
each word has a single writer. Health words are written by the worker that
sees the event. Two workers writing the same health word at the same moment
can lose one of the two updates, which costs one failure count, never a host.

Layout (native byte order and alignment; ``S`` service slots, ``H`` host
slots, ``W`` worker columns, ``N`` name records for ``resolve: true`` entries,
each with a block of ``ADDRESSES`` host slots after the ``H`` fixed ones, so
``H'`` = H + ADDRESSES x N; all fixed when the master maps the area):

====================  =====================  ==========================================
array                 words                  per slot
====================  =====================  ==========================================
``pod``               4 x int64              prober pid, 3 spare
``services``          S x 2 x int64          health generation, round-robin counter
``host_times``        H' x 2 x double        ejected until, returned at
                                             (``time.monotonic()``: one clock for
                                             every process of the machine)
``host_counts``       H' x 4 x int32         failures in a row, ejections,
                                             health check down (0/1), probe streak
``in_flight``         (S + H') x W x int32   requests in flight, one word per worker
``name_sequences``    N x int64              odd while the record is written
``name_bytes``        N x 4096 bytes         the name's last lookup, JSON (NameRecord)
====================  =====================  ==========================================

A service's slot is keyed by its name, a host's by (service name, address:port),
a name's by (service name, entry).
On SIGHUP the master places the new config: names it has seen keep their
slots (and with them ejections, health and counts); new ones get slots never
used before; slots of hosts that left are reused, zeroed, only once every
unused slot is taken (workers of the old config may still be finishing
requests on them). A config that needs more slots than the area holds is
refused like any invalid file.
"""

from __future__ import annotations

import array
import json
import logging
import mmap
import os
import struct
from collections import deque
from dataclasses import dataclass

from app.config import ConfigError, Host, ProxyConfig, Service

log = logging.getLogger("gunicorn.error")

POD_WORDS = 4
SERVICE_WORDS = 2  # generation, round-robin counter
HOST_TIMES = 3  # ejected_until, returned_at, failed_at
HOST_COUNTS = 4  # failures, ejections, active_down, active_streak
PROBER_PID = 0  # index in the pod words
# A DNS name's record (app/traffic/discovery.py): its addresses, as JSON, behind a
# sequence word (odd while it is written), and a block of host slots, one per address.
ADDRESSES = 64
NAME_BYTES = 4096
# Local rate-limit buckets: a key's hash and its theoretical arrival time (GCRA),
# in an open-addressed table behind a lock (app/traffic/ratelimit.py).
BUCKETS = 65536


class AreaFull(ConfigError):
    """The config needs more slots than the area was mapped with."""


@dataclass(frozen=True)
class Capacity:
    services: int
    hosts: int
    columns: int
    names: int = 0  # `resolve: true` entries, each with ADDRESSES host slots of its own
    buckets: int = 0  # local rate-limit buckets (app/traffic/ratelimit.py)

    @classmethod
    def for_config(cls, config: ProxyConfig, workers: int) -> Capacity:
        """Room for the config four times over (hosts come and go on reloads), and a
        column for each worker of a reload's two generations, twice over."""
        hosts = sum(len(service.hosts) for service in config.services)
        names = sum(len(service.discover) for service in config.services)
        return cls(
            services=max(256, 4 * len(config.services)),
            hosts=max(1024, 4 * hosts),
            columns=max(8, 4 * workers),
            names=max(16, 4 * names),
            buckets=BUCKETS,
        )

    @property
    def host_rows(self) -> int:
        """Host slots: the fixed hosts', then a block of ADDRESSES per name."""
        return self.hosts + self.names * ADDRESSES


class SharedArea:
    """The mapped memory and its typed views; the master also hands out slots and columns."""

    def __init__(self, capacity: Capacity):
        self.capacity = capacity
        s, h, w, n = capacity.services, capacity.host_rows, capacity.columns, capacity.names
        sizes = (
            ("q", POD_WORDS),
            ("q", s * SERVICE_WORDS),
            ("d", h * HOST_TIMES),
            ("i", h * HOST_COUNTS),
            ("i", (s + h) * w),
            ("q", n),
            ("B", n * NAME_BYTES),
            ("q", capacity.buckets),  # the key's hash
            ("q", capacity.buckets),  # its TAT, time.monotonic_ns()
            ("i", w),  # each worker's open client connections; -1: not accepting
        )
        self.memory = mmap.mmap(-1, sum(struct.calcsize(kind) * n for kind, n in sizes))
        views, offset = [], 0
        for kind, count in sizes:
            size = struct.calcsize(kind) * count
            views.append(memoryview(self.memory)[offset : offset + size].cast(kind))
            offset += size
        self.pod, self.services, self.host_times, self.host_counts, self.in_flight = views[:5]
        self.name_sequences, self.name_bytes, self.bucket_keys, self.bucket_times = views[5:9]
        self.connections = views[9]  # fair accepting (app/process/accept.py)
        self.connections[:] = array.array("i", [-1]) * w
        self.column = 0  # this process's worker column; set by the master before each fork
        self.lock_fd: int | None = None  # the prober election's file (ProberLock)
        self.bucket_lock_fd: int | None = None  # the buckets' lock (ratelimit.LocalBuckets)
        # The master's books: slots by key, and columns by the workers holding them.
        self._service_slots: dict[str, int] = {}
        self._host_slots: dict[tuple[str, str], int] = {}
        self._name_slots: dict[tuple[str, str], int] = {}
        self._used = {"service": 0, "host": 0, "name": 0}  # slots below these were handed out
        self._freed: dict[str, deque[int]] = {"service": deque(), "host": deque(), "name": deque()}
        self._holders = [0] * w

    # --- the master: slots for a config ----------------------------------

    def place(self, config: ProxyConfig) -> Zone:
        """Slots for every service and host of ``config``; raises AreaFull, changing nothing."""
        services = {service.name: None for service in config.services}
        hosts = {
            (service.name, host.name): None for service in config.services for host in service.hosts
        }
        names = {
            (service.name, entry.name): None
            for service in config.services
            for entry in service.discover
        }
        self._fit("service", services, self._service_slots, "services")
        self._fit("host", hosts, self._host_slots, "hosts")
        self._fit("name", names, self._name_slots, "resolved names")
        self._service_slots = self._assign("service", services, self._service_slots)
        self._host_slots = self._assign("host", hosts, self._host_slots)
        self._name_slots = self._assign("name", names, self._name_slots)
        return Zone(self, dict(self._service_slots), dict(self._host_slots), dict(self._name_slots))

    def _fit(self, kind: str, wanted: dict, held: dict, what: str) -> None:
        new = sum(1 for key in wanted if key not in held)
        left = sum(1 for key in held if key not in wanted)
        limit = getattr(self.capacity, f"{kind}s")
        room = limit - self._used[kind] + len(self._freed[kind]) + left
        if new > room:
            raise AreaFull(
                "proxy.services",
                f"{new} new {what}, and the shared area has room for {room} more (it holds"
                f" {limit} {what}, sized at start): restart lbproxy to size it for this config",
            )

    def _assign(self, kind: str, wanted: dict, held: dict) -> dict:
        for key, slot in held.items():
            if key not in wanted:
                self._freed[kind].append(slot)
        placed = {}
        for key in wanted:
            slot = held.get(key)
            if slot is None and self._used[kind] < getattr(self.capacity, f"{kind}s"):
                slot = self._used[kind]
                self._used[kind] += 1
            elif slot is None:
                slot = self._freed[kind].popleft()
                self._zero(kind, slot)
            placed[key] = slot
        return placed

    def _zero(self, kind: str, slot: int) -> None:
        w = self.capacity.columns
        if kind == "service":
            self.services[slot * SERVICE_WORDS : (slot + 1) * SERVICE_WORDS] = _zeros("q", 2)
            self.in_flight[slot * w : (slot + 1) * w] = _zeros("i", w)
        elif kind == "host":
            self.zero_host(slot, in_flight=True)
        else:  # a name: its record and its block of hosts
            self.name_sequences[slot] = 0
            self.name_bytes[slot * NAME_BYTES : slot * NAME_BYTES + 4] = _zeros("B", 4)
            first = self.capacity.hosts + slot * ADDRESSES
            for host_slot in range(first, first + ADDRESSES):
                self.zero_host(host_slot, in_flight=True)

    def zero_host(self, slot: int, in_flight: bool = False) -> None:
        """Forget a host slot's health (and its in-flight words, when no worker can
        still be counting on them)."""
        self.host_times[slot * HOST_TIMES : (slot + 1) * HOST_TIMES] = _zeros("d", HOST_TIMES)
        self.host_counts[slot * HOST_COUNTS : (slot + 1) * HOST_COUNTS] = _zeros("i", HOST_COUNTS)
        if in_flight:
            w, row = self.capacity.columns, self.capacity.services + slot
            self.in_flight[row * w : (row + 1) * w] = _zeros("i", w)

    def host_in_flight(self, slot: int) -> int:
        """Requests in flight to a host slot, every worker's."""
        w, row = self.capacity.columns, self.capacity.services + slot
        return max(0, sum(self.in_flight[row * w : (row + 1) * w]))

    # --- the master: a column per worker ---------------------------------

    def take_column(self) -> int:
        """The column of the worker about to be forked: a free one, else (more
        workers alive than columns: logged) the least shared one."""
        column = min(range(len(self._holders)), key=self._holders.__getitem__)
        if self._holders[column]:
            log.error(
                "lbproxy: more than %d workers alive: the in-flight counts of workers"
                " sharing column %d may be off until they exit",
                len(self._holders),
                column,
            )
        self._holders[column] += 1
        self.column = column  # inherited by the worker forked next
        return column

    def release_column(self, column: int) -> None:
        """A worker exited: what it had in flight is no longer in flight."""
        self._holders[column] -= 1
        if self._holders[column] > 0:
            return
        # Only the words that are not zero: writing every one would make every
        # page of the area resident (reading an untouched page maps none).
        in_flight = self.in_flight
        for index in range(column, len(in_flight), self.capacity.columns):
            if in_flight[index]:
                in_flight[index] = 0
        self.connections[column] = -1

    # --- fair accepting: each worker's open connections ---------------------

    def publish_connections(self, count: int) -> None:
        """This worker's open client connections; -1 when it no longer accepts."""
        self.connections[self.column] = count

    def accepting_counts(self) -> list[int]:
        """The open connections of every worker that accepts, this one's included."""
        return [count for count in self.connections if count >= 0]

    def create_lock(self) -> None:
        """The locks' memory files (the prober election, the rate-limit buckets):
        made before the fork, so every worker has them."""
        if self.lock_fd is None:
            self.lock_fd = os.memfd_create("lbproxy-prober")
        if self.bucket_lock_fd is None:
            self.bucket_lock_fd = os.memfd_create("lbproxy-buckets")

    def own_description(self, attribute: str) -> int:
        """A new open file description of one of the lock files, this process's own.

        ``flock`` locks a description: one inherited from the master would be
        shared by every worker and exclude nothing. Opening the memory file anew
        through ``/proc/self/fd`` gives each process its own (and no path on any
        filesystem is needed, so a read-only root is fine).
        """
        self.create_lock()  # made by the master already in a gunicorn worker
        path = f"/proc/self/fd/{getattr(self, attribute)}"  # lock_fd or bucket_lock_fd
        return os.open(path, os.O_RDWR | os.O_CLOEXEC)

    # --- every process ---------------------------------------------------

    @property
    def prober_pid(self) -> int:
        return self.pod[PROBER_PID]

    @prober_pid.setter
    def prober_pid(self, pid: int) -> None:
        self.pod[PROBER_PID] = pid


def _zeros(kind: str, count: int) -> memoryview:
    return memoryview(bytes(struct.calcsize(kind) * count)).cast(kind)


class Zone:
    """The area as one config sees it: the slot of each service and host.

    The master makes one per config it places; each worker uses the zone of
    the config it was forked with.
    """

    def __init__(
        self,
        area: SharedArea,
        services: dict[str, int],
        hosts: dict[tuple[str, str], int],
        names: dict[tuple[str, str], int] | None = None,
    ):
        self.area = area
        self.service_slots = services
        self.host_slots = hosts
        self.name_slots = names or {}

    @classmethod
    def private(cls, config: ProxyConfig, workers: int = 1, exact: bool = False) -> Zone:
        """An area of its own (outside gunicorn, and in tests): shared with nobody
        but the processes this one forks. ``exact``: no room to grow (a lone balancer)."""
        if exact:
            hosts = sum(len(service.hosts) for service in config.services)
            names = sum(len(service.discover) for service in config.services)
            capacity = Capacity(len(config.services), hosts, workers, names)
        else:
            capacity = Capacity.for_config(config, workers)
        return SharedArea(capacity).place(config)

    def service(self, service: Service, resolved: dict[Host, int] | None = None) -> ServiceState:
        """A service's words; ``resolved``: the host slots of its resolved addresses."""
        hosts = service.hosts
        slots = [self.host_slots[(service.name, host.name)] for host in service.hosts]
        if resolved:
            hosts = hosts + tuple(resolved)
            slots += resolved.values()
        return ServiceState(self.area, self.service_slots[service.name], tuple(slots), hosts)

    def name(self, service: Service, entry: Host) -> NameRecord:
        return NameRecord(self.area, self.name_slots[(service.name, entry.name)])


def private_state(hosts: tuple[Host, ...]) -> ServiceState:
    """A service's words in an area of its own, outside any pod (a lone
    balancer or health view: tests, tools)."""
    service = Service(name="private", domain="private.invalid", hosts=hosts)
    return Zone.private(ProxyConfig(services=(service,)), exact=True).service(service)


class NameRecord:
    """A resolved name in the area: what the prober's resolver last found
    (app/traffic/discovery.py), read by every worker.

    The document is JSON, written between two bumps of a sequence word (odd
    while it is being written): a reader that sees the word odd, or changed
    under it, keeps what it had and reads again on its next request.
    """

    def __init__(self, area: SharedArea, slot: int):
        self.area = area
        self.slot = slot
        self.first_host = area.capacity.hosts + slot * ADDRESSES  # address i: host slot first + i
        self._start = slot * NAME_BYTES

    @property
    def sequence(self) -> int:
        return self.area.name_sequences[self.slot]

    def read(self) -> tuple[int, dict] | None:
        """(sequence, document), or None while it is being written (or never was)."""
        before = self.sequence
        if before == 0 or before % 2:
            return None
        data = self.area.name_bytes[self._start : self._start + NAME_BYTES]
        length = int.from_bytes(data[:4], "little")
        document = bytes(data[4 : 4 + length])
        if self.sequence != before:
            return None
        try:
            return before, json.loads(document)
        except ValueError:  # torn after all (weakly ordered memory): read it next time
            return None

    def write(self, document: dict) -> None:
        data = json.dumps(document, separators=(",", ":")).encode()
        if len(data) > NAME_BYTES - 4:
            raise ValueError(f"a name's record holds {NAME_BYTES - 4} bytes, not {len(data)}")
        sequences = self.area.name_sequences
        sequence = sequences[self.slot]
        # Odd while it is written, whatever it held: a writer killed mid-write
        # leaves it odd, and the next writer must not make that even.
        sequences[self.slot] = sequence + 1 + (sequence & 1)
        start = self._start
        self.area.name_bytes[start : start + 4] = memoryview(len(data).to_bytes(4, "little"))
        self.area.name_bytes[start + 4 : start + 4 + len(data)] = memoryview(data)
        sequences[self.slot] += 1


class ServiceState:
    """One service's words in the area, as one worker reads and writes them."""

    def __init__(
        self, area: SharedArea, slot: int, host_slots: tuple[int, ...], hosts: tuple[Host, ...]
    ):
        w, column, first_host_row = area.capacity.columns, area.column, area.capacity.services
        self.area = area
        self.hosts = hosts
        self.in_flight = area.in_flight
        self.services = area.services
        self.generation_word = slot * SERVICE_WORDS
        self.turn_word = slot * SERVICE_WORDS + 1
        self.row = (slot * w, (slot + 1) * w)  # the service's in-flight words
        self.own = slot * w + column  # ... and this worker's among them
        self.host_rows = {}
        self.host_own = {}
        self.host_state = {}
        for host, host_slot in zip(hosts, host_slots, strict=True):
            row = (first_host_row + host_slot) * w
            self.host_rows[host] = (row, row + w)
            self.host_own[host] = row + column
            self.host_state[host] = HostState(area, host_slot)

    # --- in flight: this worker's words written, every worker's summed ----

    def take(self, host: Host) -> None:
        self.in_flight[self.host_own[host]] += 1
        self.in_flight[self.own] += 1

    def give_back(self, host: Host) -> None:
        self.in_flight[self.host_own[host]] -= 1
        self.in_flight[self.own] -= 1

    def host_in_flight(self, host: Host) -> int:
        start, end = self.host_rows[host]
        return max(0, sum(self.in_flight[start:end]))

    def worker_in_flight(self) -> int:
        """This worker's own requests in flight for the service."""
        return max(0, self.in_flight[self.own])

    def total_in_flight(self) -> int:
        start, end = self.row
        return max(0, sum(self.in_flight[start:end]))

    # --- the round-robin counter and the health generation -----------------

    def next_turn(self) -> int:
        """The service's next round-robin turn, counted pod-wide."""
        turn = self.services[self.turn_word]
        self.services[self.turn_word] = turn + 1
        return turn

    @property
    def generation(self) -> int:
        """Bumped on every change of a host's health: workers refresh their view on it."""
        return self.services[self.generation_word]

    def changed(self) -> None:
        self.services[self.generation_word] += 1


class HostState:
    """One host's health words in the area (app/traffic/health.py reads and writes them)."""

    __slots__ = ("_count_word", "_counts", "_time_word", "_times")

    def __init__(self, area: SharedArea, slot: int):
        self._times, self._time_word = area.host_times, slot * HOST_TIMES
        self._counts, self._count_word = area.host_counts, slot * HOST_COUNTS

    ejected_until = property(
        lambda self: self._times[self._time_word],
        lambda self, value: self._times.__setitem__(self._time_word, value),
    )
    returned_at = property(
        lambda self: self._times[self._time_word + 1],
        lambda self, value: self._times.__setitem__(self._time_word + 1, value),
    )
    failed_at = property(
        lambda self: self._times[self._time_word + 2],
        lambda self, value: self._times.__setitem__(self._time_word + 2, value),
    )
    failures = property(
        lambda self: self._counts[self._count_word],
        lambda self, value: self._counts.__setitem__(self._count_word, value),
    )
    ejections = property(
        lambda self: self._counts[self._count_word + 1],
        lambda self, value: self._counts.__setitem__(self._count_word + 1, value),
    )
    active_down = property(
        lambda self: bool(self._counts[self._count_word + 2]),
        lambda self, value: self._counts.__setitem__(self._count_word + 2, int(value)),
    )
    active_streak = property(
        lambda self: self._counts[self._count_word + 3],
        lambda self, value: self._counts.__setitem__(self._count_word + 3, value),
    )


class ProberLock:
    """One worker of the pod runs the active health checks: the one holding this lock.

    The lock is ``flock`` on a memory file the master created, through a
    description each worker opens for itself (``SharedArea.own_description``).
    The kernel frees the lock when its holder dies, however it dies; the
    others try again every second.
    """

    def __init__(self, area: SharedArea):
        self.area = area
        self.fd: int | None = None
        self.held = False

    def acquire(self) -> bool:
        """True once this worker holds the lock (and from then on)."""
        import fcntl

        if self.held:
            return True
        if self.fd is None:
            self.fd = self.area.own_description("lock_fd")
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        self.held = True
        self.area.prober_pid = os.getpid()
        return True

    def release(self) -> None:
        if self.held and self.area.prober_pid == os.getpid():
            self.area.prober_pid = 0
        self.held = False
        if self.fd is not None:
            os.close(self.fd)  # closing the description frees the lock
            self.fd = None
