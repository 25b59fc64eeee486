"""Processes the tooling starts, how it waits for them, stops them, and what /proc says.

Standard library only: bench/, monitoring/, jmeter/ and the tests use it, and
some of them run under a python that has none of the project's packages.
Linux only (it reads /proc).

Every process is started in its own session (Ctrl-C reaches the tool, which
stops them), its output in a log file, and remembered with its start time, so
a reused PID is never mistaken for ours. It is stopped by PID: its stop signal,
SIGKILL after a timeout, then any of its descendants still alive. Never by name.

CPU time is utime + stime + cutime + cstime of /proc/PID/stat in clock ticks
(CLOCK_TICKS a second): with the children's part, a worker that exits and is
reaped keeps its CPU in its parent's total. Memory is Rss and Pss of
/proc/PID/smaps_rollup, in KiB.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
LOOPBACK = "127.0.0.1"


class StartError(RuntimeError):
    """A started process exited, or was not ready in time: why, and the end of its log."""

    def __init__(self, reason: str, log: str = ""):
        super().__init__(f"{reason}:\n{log}" if log else reason)
        self.reason = reason


# --- ports ---------------------------------------------------------------------


def free_port(address: str = LOOPBACK) -> int:
    """A TCP port nothing listens on now (the kernel's pick)."""
    with socket.socket() as sock:
        sock.bind((address, 0))
        return sock.getsockname()[1]


def port_open(port: int, address: str = LOOPBACK, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(
    ready: Callable[[], bool], process: Spawned, timeout: float, what: str, interval: float = 0.05
) -> bool:
    """Poll ready() until it is true (True) or timeout has passed (False).

    Raises StartError at once if the process exits first: waiting out the
    timeout would only hide why.
    """
    deadline = time.monotonic() + timeout
    while True:
        if not process.running():
            raise StartError(
                f"{process.name} exited with {process.returncode} before {what} was ready",
                process.log_tail(),
            )
        if ready():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def wait_for_port(
    port: int, process: Spawned, timeout: float = 15.0, address: str = LOOPBACK
) -> None:
    """Until port accepts a connection; StartError (with the log's end) if it does not."""
    if not wait_until(lambda: port_open(port, address), process, timeout, f"port {port}"):
        raise StartError(
            f"{process.name}: port {port} did not open within {timeout:.3g} s", process.log_tail()
        )


# --- /proc ---------------------------------------------------------------------


def read_stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat from field 3 (state) on, or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # gone before or while it was read
        return None
    # comm (field 2) is in parentheses and may hold spaces or parentheses.
    return text[text.rindex(")") + 2 :].split()


def start_time(pid: int) -> int | None:
    fields = read_stat(pid)
    return int(fields[19]) if fields else None  # field 22: starttime


def is_alive(pid: int, started: int | None = None) -> bool:
    """PID runs and is not a zombie; with ``started``, it is still the process that
    had this start time (not another that got the PID after it)."""
    fields = read_stat(pid)
    if fields is None or fields[0] == "Z":
        return False
    return started is None or int(fields[19]) == started


def _children_by_parent() -> dict[int, list[int]]:
    """Every process's children, from the ppid links of a walk of /proc."""
    found: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and (fields := read_stat(int(entry.name))):
            found.setdefault(int(fields[1]), []).append(int(entry.name))
    return found


def children(pid: int) -> list[int]:
    return _children_by_parent().get(pid, [])


def descendants(root: int) -> list[int]:
    links = _children_by_parent()
    found, queue = [], [root]
    while queue:
        for child in links.get(queue.pop(), []):
            found.append(child)
            queue.append(child)
    return found


def tree(root: int) -> list[int]:
    """root and all its descendants, or [] if root is gone."""
    return [root, *descendants(root)] if read_stat(root) else []


def cpu_ticks_each(pids: Iterable[int]) -> dict[int, int]:
    """utime + stime + cutime + cstime of each live PID (clock ticks)."""
    ticks = {}
    for pid in pids:
        if fields := read_stat(pid):
            ticks[pid] = sum(int(value) for value in fields[11:15])  # fields 14-17
    return ticks


def cpu_ticks(pids: Iterable[int]) -> int:
    return sum(cpu_ticks_each(pids).values())


def memory_of(pid: int) -> tuple[int, int] | None:
    """(Rss, Pss) of one process in KiB, or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except PermissionError:
        # Another user's process: statm is readable by anyone, smaps_rollup is not.
        try:
            return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_SIZE // 1024, 0
        except OSError:
            return None
    except OSError:
        return None
    rss = pss = 0
    for line in text.splitlines():
        if line.startswith("Rss:"):
            rss = int(line.split()[1])
        elif line.startswith("Pss:"):
            pss = int(line.split()[1])
    return rss, pss


def memory_kib(pids: Iterable[int]) -> tuple[int, int]:
    """(Rss, Pss) in KiB summed over the live pids."""
    readings = [reading for pid in pids if (reading := memory_of(pid))]
    return sum(rss for rss, _ in readings), sum(pss for _, pss in readings)


def _cpu_line() -> list[int]:
    """The all-CPU line of /proc/stat: user nice system idle iowait irq softirq steal ..."""
    return [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]


def system_busy_ticks() -> int:
    """user + nice + system clock ticks of all CPUs since boot.

    The time processes are charged with; irq, softirq (much of loopback
    networking) and steal are left out, as no process's stat shows them.
    """
    user, nice, system = _cpu_line()[:3]
    return user + nice + system


def machine_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of all CPUs since boot: busy is all but idle and iowait."""
    values = _cpu_line()
    total = sum(values)
    return total - values[3] - values[4], total


# --- stopping by PID -----------------------------------------------------------


def stop_pids(
    pids: Iterable[int], still_ours: Callable[[int], bool], grace: float = 2.0
) -> list[int]:
    """SIGTERM each PID still ours, wait up to ``grace`` s, then SIGKILL those left.

    ``still_ours(pid)`` must tell our process from another that got its PID
    since (by start time, command line...): only ours is ever signalled.
    Returns the PIDs that needed SIGKILL.
    """
    pids = list(pids)
    killed: list[int] = []
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2.0)):
        targets = [pid for pid in pids if still_ours(pid)]
        if sig == signal.SIGKILL:
            killed = targets
        for pid in targets:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and any(still_ours(pid) for pid in targets):
            time.sleep(0.05)
    return killed


@dataclass(frozen=True)
class Member:
    """A process of a started tree (the root or a descendant), known by PID and start time."""

    pid: int
    started: int
    name: str

    def alive(self) -> bool:
        return is_alive(self.pid, self.started)


def launch(
    args: list[str],
    log: Path,
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    fresh_log: bool = False,
) -> subprocess.Popen:
    """args in a new session, stdout and stderr to log (appended to, unless fresh_log)."""
    with open(log, "wb" if fresh_log else "ab") as out:
        return subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,  # Ctrl-C reaches the tool only; the tool stops them
        )


class Spawned:
    """A process this tool started (``popen``), its output in ``log``; stopped by PID."""

    def __init__(
        self,
        name: str,
        popen: subprocess.Popen,
        log: Path | None = None,
        stop_signal: int = signal.SIGTERM,
    ):
        self.name = name
        self.popen = popen
        self.log = Path(log) if log else None
        self.stop_signal = stop_signal
        self.seen: dict[int, Member] = {}
        # The root's start time now: until it is reaped its PID cannot be reused.
        self.tree()

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.returncode

    def running(self) -> bool:
        return self.popen.poll() is None

    def wait(self, timeout: float | None = None) -> int:
        return self.popen.wait(timeout)

    def signal(self, signum: int) -> None:
        self.popen.send_signal(signum)  # a no-op once it is reaped: never another's PID

    def children(self) -> list[int]:
        return children(self.pid) if self.running() else []

    def tree(self) -> list[int]:
        """The live tree now, root first; every member is remembered for stop()."""
        pids = tree(self.pid) if self.running() else []
        for pid in pids:
            if pid not in self.seen and (started := start_time(pid)) is not None:
                self.seen[pid] = Member(pid, started, self.name)
        return pids

    def output(self) -> str:
        if self.log is None:
            return ""
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.output().splitlines()[-lines:])

    def stop(self, timeout: float = 10.0) -> int | None:
        """Stop signal to the root, SIGKILL after timeout; then whatever is left of its
        tree (a worker its master left behind), by PID. Returns the exit status."""
        members = self.tree()
        if self.running():
            self.signal(self.stop_signal)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        leftovers = [pid for pid in members if pid != self.pid and pid in self.seen]
        stop_pids(leftovers, lambda pid: self.seen[pid].alive())
        return self.popen.returncode

    def survivors(self) -> list[Member]:
        return [member for member in self.seen.values() if member.alive()]


def spawn(
    name: str,
    args: list[str],
    log: Path,
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    stop_signal: int = signal.SIGTERM,
    fresh_log: bool = False,
) -> Spawned:
    """Start args as a Spawned (env: the whole environment; None inherits ours)."""
    popen = launch(args, log, env=env, cwd=cwd, fresh_log=fresh_log)
    return Spawned(name, popen, log, stop_signal)


class Server(Spawned):
    """A spawned process serving on ``port``: started, then waited for until it (and
    ``more_ports``) accept connections; stopped again if it does not come up."""

    def __init__(
        self,
        name: str,
        args: list[str],
        port: int,
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        log: Path | None = None,
        more_ports: Iterable[int] = (),
        timeout: float = 15.0,
        address: str = LOOPBACK,
    ):
        log = Path(log) if log else temporary_log(name)
        super().__init__(name, launch(args, log, env=env, cwd=cwd, fresh_log=True), log)
        self.port = port
        self.address = address
        try:
            for each in (port, *more_ports):
                wait_for_port(each, self, timeout, address)
        except StartError as error:
            self.stop()
            # The whole log: a server's start-up failure is short, and all of it matters.
            raise StartError(error.reason, self.output()) from None


def temporary_log(name: str) -> Path:
    """A new log file in the temp dir, kept after the process (to read why it failed)."""
    handle, path = tempfile.mkstemp(prefix=f"lbproxy-{name}-", suffix=".log")
    os.close(handle)
    return Path(path)


class Registry:
    """The processes a tool started: stop one, stop all (newest first), and which
    outlived their stop (``record`` keeps every member of every stopped tree)."""

    def __init__(self, timeout: float = 10.0):
        self.timeout = timeout
        self.live: list[Spawned] = []
        self.record: list[Member] = []

    def add(self, process: Spawned) -> Spawned:
        self.live.append(process)
        return process

    def start(self, name: str, args: list[str], log: Path, **options) -> Spawned:
        """spawn() and remember; options as spawn's."""
        return self.add(spawn(name, args, log, **options))

    def stop(self, process: Spawned, timeout: float | None = None) -> None:
        try:
            process.stop(self.timeout if timeout is None else timeout)
        finally:
            self.record.extend(process.seen.values())
            if process in self.live:
                self.live.remove(process)

    def stop_all(self, timeout: float | None = None) -> list[str]:
        """Stop every live process, newest first; one that fails to stop does not keep
        the others running. Returns what failed, as text."""
        errors = []
        for process in reversed(list(self.live)):
            try:
                self.stop(process, timeout)
            except Exception as error:
                errors.append(f"could not stop {process.name} ({process.pid}): {error}")
        return errors

    def exited(self) -> list[Spawned]:
        """The live processes that exited on their own."""
        return [process for process in self.live if not process.running()]

    def survivors(self) -> list[Member]:
        return [member for member in self.record if member.alive()]
