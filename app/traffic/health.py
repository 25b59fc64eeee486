"""Which hosts of a service are in rotation.

Two signals, kept for the whole pod in its shared area (app/traffic/shared.py):
a host one worker ejects is out for every worker, and one worker probes for all.

- passive: outlier ejection. A host that fails ``consecutive_failures`` times
  in a row (connect error, timeout, reset; 5xx if ``count_5xx``) is taken out
  for ``base_ejection`` seconds, doubled on each new ejection up to
  ``max_ejection``. It then comes back on probation: one more failure ejects
  it again. Never more than ``max_ejected_percent`` of a service's hosts are
  ejected at once.
- active: an optional ``health_check`` probes each host every ``interval``
  (HealthChecker); ``unhealthy_threshold`` failures in a row take the host
  out, ``healthy_threshold`` successes bring it back.

A host is in rotation when neither signal has it out. Every change bumps the
service's generation in the area; each worker keeps its answer to "which hosts
are out" until the generation moves or an ejection's time is up, so a request
reads one shared word, not every host's state.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable

from app.config import Host, Service
from app.traffic.shared import ServiceState, private_state

log = logging.getLogger("gunicorn.error")

NEVER = float("inf")


class Health:
    def __init__(
        self,
        service: Service,
        clock: Callable[[], float] = time.monotonic,
        state: ServiceState | None = None,
    ):
        self.service = service
        self.policy = service.outlier
        self.clock = clock
        self.shared = state or private_state(service.hosts)
        self.states = self.shared.host_state  # HostState views on the area, by host
        self.ejectable = len(service.hosts) * self.policy.max_ejected_percent // 100
        self.on_event: Callable[[str, Host], None] = lambda event, host: None
        self._out: frozenset[Host] = frozenset()
        self._next_change = NEVER
        self._generation = -1  # of the area when _out was worked out: not yet

    # --- reading: called on every request, so mostly a cached answer ------

    def out_of_rotation(self) -> frozenset[Host]:
        if self.shared.generation != self._generation or self.clock() >= self._next_change:
            self.refresh()
        return self._out

    def in_rotation(self) -> list[Host]:
        out = self.out_of_rotation()
        return [host for host in self.service.hosts if host not in out]

    def failing(self, host: Host) -> bool:
        """Failed ``consecutive_failures`` times in a row, the last within
        ``base_ejection``: a host max_ejected_percent keeps in rotation (a lone
        one, say) though it is down. It stops failing on a success, or once that
        time has passed with no new failure, as an ejection ends: a pod that it
        left unready gets no request whose success could clear it."""
        state = self.states[host]
        return (
            state.failures >= self.policy.consecutive_failures
            and self.clock() - state.failed_at < self.policy.base_ejection
        )

    def usable(self) -> list[Host]:
        """The hosts readiness counts on: in rotation and not failing."""
        return [host for host in self.in_rotation() if not self.failing(host)]

    # --- passive ---------------------------------------------------------

    def record_success(self, host: Host) -> None:
        state = self.states[host]
        state.failures = 0
        if state.ejections and self.clock() - state.returned_at > self.policy.max_ejection:
            state.ejections = 0  # well for a while: the next ejection starts short again

    def record_failure(self, host: Host) -> bool:
        """Count a failure; True when it ejects the host."""
        state = self.states[host]
        state.failures += 1
        now = self.clock()
        state.failed_at = now
        if state.failures < self.policy.consecutive_failures or state.ejected_until > now:
            return False
        ejected = sum(1 for s in self.states.values() if s.ejected_until > now)
        if ejected >= self.ejectable:
            return False
        state.ejections += 1
        backoff = self.policy.base_ejection * 2 ** (state.ejections - 1)
        state.ejected_until = now + min(backoff, self.policy.max_ejection)
        state.failures = 0
        log.warning(
            "lbproxy: %s: ejected %s for %.1f s (%d failures in a row)",
            self.service.name,
            host.name,
            state.ejected_until - now,
            self.policy.consecutive_failures,
        )
        self.on_event("ejected", host)
        self.shared.changed()
        self.refresh()
        return True

    # --- active ----------------------------------------------------------

    def record_probe(self, host: Host, healthy: bool) -> None:
        check = self.service.health_check
        state = self.states[host]
        if healthy != state.active_down:  # the probe agrees with the current state
            state.active_streak = 0
            return
        state.active_streak += 1
        needed = check.healthy_threshold if healthy else check.unhealthy_threshold
        if state.active_streak >= needed:
            state.active_down = not healthy
            state.active_streak = 0
            log.warning(
                "lbproxy: %s: health check marks %s %s",
                self.service.name,
                host.name,
                "up" if healthy else "down",
            )
            self.on_event("up" if healthy else "down", host)
            self.shared.changed()
            self.refresh()

    # ---------------------------------------------------------------------

    def refresh(self) -> None:
        """Work out which hosts are out, from the area's words."""
        self._generation = self.shared.generation
        now = self.clock()
        checked = self.service.health_check is not None
        out = set()
        next_change = NEVER
        for host, state in self.states.items():
            ejected_until = state.ejected_until
            if ejected_until > now:
                out.add(host)
                next_change = min(next_change, ejected_until)
            elif ejected_until and state.ejected_until == ejected_until:
                # The ejection just ended: back, on probation. The first worker to
                # see it says so; reading the word again right before clearing it
                # keeps a new ejection by another worker meanwhile (all but a
                # window of a few instructions: docs/affinity.md).
                state.ejected_until = 0.0
                state.returned_at = now
                state.failures = self.policy.consecutive_failures - 1
                self.on_event("returned", host)
            if state.active_down and checked:  # a check removed on reload: no longer down
                out.add(host)
        self._out = frozenset(out)
        self._next_change = next_change


class HealthChecker:
    """Probe every host of a service in the background (one greenlet per host).

    Only the pod's prober runs checkers (the worker holding
    app/traffic/shared.ProberLock), so a host gets one probe per ``interval``
    per pod; the first probe of each host is spread over one interval so
    hosts are not probed in step. A probe is one GET on a new
    connection, with the service's upstream TLS settings, read by the same
    strict response reader as proxied traffic; any answer below 400 is healthy.

    ``health`` is a Health, or a callable giving the route's current one: the
    hosts of a service with resolved names change (app/traffic/discovery.py),
    and each interval the checker starts probing new hosts and stops probing
    hosts that left.
    """

    def __init__(self, health: Health | Callable[[], Health], pools, spawn: Callable, tls=None):
        self.health_of = health if callable(health) else lambda: health
        self.pools = pools  # app/upstream/pool.Pools, with the probe Session's settings
        self.spawn = spawn
        self.tls = tls  # app/upstream/tls.UpstreamTLSTarget, or None for plain HTTP
        self.greenlets = []
        self.probing: dict[Host, object] = {}  # host -> its greenlet

    @property
    def health(self) -> Health:
        return self.health_of()

    def start(self) -> None:
        self.greenlets.append(self.spawn(self._supervise))

    def stop(self) -> None:
        import gevent

        gevent.killall([*self.greenlets, *self.probing.values()], block=False)
        self.greenlets = []
        self.probing = {}

    def _supervise(self) -> None:
        import gevent

        while True:
            try:
                self.follow(self.health.service.hosts)
            except Exception:  # never let the probes of new hosts stop for good
                log.exception("lbproxy: health checks of %s", self.health.service.name)
            gevent.sleep(self.health.service.health_check.interval)

    def follow(self, hosts: tuple[Host, ...]) -> None:
        """Probe exactly ``hosts``: start the new ones, stop those that left."""
        for host in set(self.probing) - set(hosts):
            self.probing.pop(host).kill(block=False)
        for host in hosts:
            if host not in self.probing:
                self.probing[host] = self.spawn(self._run, host)

    def _run(self, host: Host) -> None:
        import gevent

        gevent.sleep(random.uniform(0, self.health.service.health_check.interval))
        while True:
            healthy = self.probe(host)
            health = self.health
            if host in health.states:  # still a host of the service
                health.record_probe(host, healthy)
            gevent.sleep(health.service.health_check.interval)

    def probe(self, host: Host) -> bool:
        from app.http.framing import send_all
        from app.upstream.forward import read_response_head

        check = self.health.service.health_check
        request = (
            f"GET {check.path} HTTP/1.1\r\nHost: {self.health.service.domain}\r\n"
            "User-Agent: lbproxy-health-check\r\nConnection: close\r\n\r\n"
        )
        pool = self.pools.get(host.address, host.port, self.tls)
        try:
            connection = pool.connect(check.timeout)
            try:
                connection.start_exchange(check.timeout, time.monotonic() + check.timeout)
                send_all(connection.sock, request.encode("latin-1"))
                status = read_response_head(connection, "GET").status
            finally:
                connection.close()
        except Exception:  # any failure to get an answer is a failed probe
            return False
        return status < 400
