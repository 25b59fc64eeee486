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
slots, ``W`` worker columns, all fixed when the master maps the area):

====================  =====================  ==========================================
array                 words                  per slot
====================  =====================  ==========================================
``pod``               4 x int64              prober pid, 3 spare
``services``          S x 2 x int64          health generation, round-robin counter
``host_times``        H x 2 x double         ejected until, returned at
                                             (``time.monotonic()``: one clock for
                                             every process of the machine)
``host_counts``       H x 4 x int32          failures in a row, ejections,
                                             health check down (0/1), probe streak
``in_flight``         (S + H) x W x int32    requests in flight, one word per worker
====================  =====================  ==========================================

A service's slot is keyed by its name, a host's by (service name, address:port).
On SIGHUP the master places the new config: names it has seen keep their
slots (and with them ejections, health and counts); new ones get slots never
used before; slots of hosts that left are reused, zeroed, only once every
unused slot is taken (workers of the old config may still be finishing
requests on them). A config that needs more slots than the area holds is
refused like any invalid file.
"""

from __future__ import annotations

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
HOST_TIMES = 2  # ejected_until, returned_at
HOST_COUNTS = 4  # failures, ejections, active_down, active_streak
PROBER_PID = 0  # index in the pod words


class AreaFull(ConfigError):
    """The config needs more slots than the area was mapped with."""


@dataclass(frozen=True)
class Capacity:
    services: int
    hosts: int
    columns: int

    @classmethod
    def for_config(cls, config: ProxyConfig, workers: int) -> Capacity:
        """Room for the config four times over (hosts come and go on reloads), and a
        column for each worker of a reload's two generations, twice over."""
        hosts = sum(len(service.hosts) for service in config.services)
        return cls(
            services=max(256, 4 * len(config.services)),
            hosts=max(1024, 4 * hosts),
            columns=max(8, 4 * workers),
        )


class SharedArea:
    """The mapped memory and its typed views; the master also hands out slots and columns."""

    def __init__(self, capacity: Capacity):
        self.capacity = capacity
        s, h, w = capacity.services, capacity.hosts, capacity.columns
        sizes = (
            ("q", POD_WORDS),
            ("q", s * SERVICE_WORDS),
            ("d", h * HOST_TIMES),
            ("i", h * HOST_COUNTS),
            ("i", (s + h) * w),
        )
        self.memory = mmap.mmap(-1, sum(struct.calcsize(kind) * n for kind, n in sizes))
        views, offset = [], 0
        for kind, count in sizes:
            size = struct.calcsize(kind) * count
            views.append(memoryview(self.memory)[offset : offset + size].cast(kind))
            offset += size
        self.pod, self.services, self.host_times, self.host_counts, self.in_flight = views
        self.column = 0  # this process's worker column; set by the master before each fork
        self.lock_fd: int | None = None  # the prober election's file (ProberLock)
        # The master's books: slots by key, and columns by the workers holding them.
        self._service_slots: dict[str, int] = {}
        self._host_slots: dict[tuple[str, str], int] = {}
        self._used = {"service": 0, "host": 0}  # slots below these were handed out
        self._freed: dict[str, deque[int]] = {"service": deque(), "host": deque()}
        self._holders = [0] * w

    # --- the master: slots for a config ----------------------------------

    def place(self, config: ProxyConfig) -> Zone:
        """Slots for every service and host of ``config``; raises AreaFull, changing nothing."""
        services = {service.name: None for service in config.services}
        hosts = {
            (service.name, host.name): None for service in config.services for host in service.hosts
        }
        self._fit("service", services, self._service_slots, "services")
        self._fit("host", hosts, self._host_slots, "hosts")
        self._service_slots = self._assign("service", services, self._service_slots)
        self._host_slots = self._assign("host", hosts, self._host_slots)
        return Zone(self, dict(self._service_slots), dict(self._host_slots))

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
            row = slot
        else:
            self.host_times[slot * HOST_TIMES : (slot + 1) * HOST_TIMES] = _zeros("d", 2)
            self.host_counts[slot * HOST_COUNTS : (slot + 1) * HOST_COUNTS] = _zeros("i", 4)
            row = self.capacity.services + slot
        self.in_flight[row * w : (row + 1) * w] = _zeros("i", w)

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

    def create_lock(self) -> None:
        """The prober election's memory file: made before the fork, so every worker has it."""
        if self.lock_fd is None:
            self.lock_fd = os.memfd_create("lbproxy-prober")

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
        self, area: SharedArea, services: dict[str, int], hosts: dict[tuple[str, str], int]
    ):
        self.area = area
        self.service_slots = services
        self.host_slots = hosts

    @classmethod
    def private(cls, config: ProxyConfig, workers: int = 1, exact: bool = False) -> Zone:
        """An area of its own (outside gunicorn, and in tests): shared with nobody
        but the processes this one forks. ``exact``: no room to grow (a lone balancer)."""
        if exact:
            hosts = sum(len(service.hosts) for service in config.services)
            capacity = Capacity(len(config.services), hosts, workers)
        else:
            capacity = Capacity.for_config(config, workers)
        return SharedArea(capacity).place(config)

    def service(self, service: Service) -> ServiceState:
        slots = tuple(self.host_slots[(service.name, host.name)] for host in service.hosts)
        return ServiceState(self.area, self.service_slots[service.name], slots, service.hosts)


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

    The lock is ``flock`` on a memory file the master created (no path on any
    filesystem, so a read-only root is fine). Each worker opens the file anew
    through ``/proc/self/fd`` (a descriptor inherited from the master would
    share one lock among all of them). The kernel frees the lock when its
    holder dies, however it dies; the others try again every second.
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
            self.area.create_lock()  # already made by the master in a gunicorn worker
            self.fd = os.open(f"/proc/self/fd/{self.area.lock_fd}", os.O_RDWR | os.O_CLOEXEC)
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
