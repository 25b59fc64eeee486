"""Processes the benchmark starts, and what /proc says about them.

Every process is started here, recorded by PID (with its start time, so a
reused PID is never mistaken for ours), and stopped by PID: the root first with
the signal that peer stops on, then any descendant still alive. Nothing is ever
stopped by name.

CPU time is utime + stime of /proc/PID/stat, in clock ticks (USER_HZ, 100 per
second here), summed over a process tree: the root and every descendant (a
gunicorn master and its workers; nginx's master and workers; proxy.py's
acceptor processes). cutime + cstime are added too, so a worker that exits and
is reaped during a run keeps its CPU in the total. Memory is Rss and Pss of
/proc/PID/smaps_rollup, summed over the same tree.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def read_stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat from field 3 (state) on, or None if gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # comm (field 2) is in parentheses and may hold spaces or parentheses.
    return text[text.rindex(")") + 2 :].split()


def start_time(pid: int) -> int | None:
    fields = read_stat(pid)
    return int(fields[19]) if fields else None  # field 22: starttime


def is_alive(pid: int, started: int) -> bool:
    """True when PID still runs the process that had this start time (not a zombie)."""
    fields = read_stat(pid)
    return fields is not None and int(fields[19]) == started and fields[0] != "Z"


def descendants(root: int) -> list[int]:
    """Every live descendant of root, by a walk of /proc (ppid links)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = read_stat(int(entry.name))
        if fields:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, queue = [], [root]
    while queue:
        for child in children.get(queue.pop(), []):
            found.append(child)
            queue.append(child)
    return found


def tree(root: int) -> list[int]:
    return [root, *descendants(root)] if read_stat(root) else []


def cpu_ticks(pids: list[int]) -> int:
    """utime + stime + cutime + cstime summed over pids (clock ticks)."""
    total = 0
    for pid in pids:
        fields = read_stat(pid)
        if fields:
            total += sum(int(value) for value in fields[11:15])  # fields 14-17
    return total


def memory_kib(pids: list[int]) -> tuple[int, int]:
    """(Rss, Pss) in KiB summed over pids, from /proc/PID/smaps_rollup."""
    rss = pss = 0
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        for line in text.splitlines():
            if line.startswith("Rss:"):
                rss += int(line.split()[1])
            elif line.startswith("Pss:"):
                pss += int(line.split()[1])
    return rss, pss


def system_busy_ticks() -> int:
    """user + nice + system clock ticks of all CPUs since boot, from /proc/stat.

    The time processes are charged with; irq, softirq (much of loopback
    networking) and steal are left out, as no process's stat shows them.
    """
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system = values[:3]
    return user + nice + system


@dataclass
class Started:
    """One process the benchmark started (or a descendant of one)."""

    pid: int
    started: int
    name: str


@dataclass
class Process:
    name: str
    args: list[str]
    popen: subprocess.Popen
    log: Path
    stop_signal: int = signal.SIGTERM
    seen: dict[int, Started] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def pids(self) -> list[int]:
        """The live tree now; every member is remembered for the final check."""
        pids = tree(self.pid) if self.popen.poll() is None else []
        for pid in pids:
            if pid not in self.seen and (started := start_time(pid)) is not None:
                self.seen[pid] = Started(pid, started, self.name)
        return pids

    def running(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class Processes:
    """The registry: start, stop one, stop all (also on Ctrl-C or an error)."""

    def __init__(self):
        self.live: list[Process] = []
        self.record: list[Started] = []

    def start(
        self,
        name: str,
        args: list[str],
        log: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        stop_signal: int = signal.SIGTERM,
    ) -> Process:
        with open(log, "ab") as out:
            popen = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd,
                start_new_session=True,  # Ctrl-C reaches the harness only; it stops them
            )
        process = Process(name, args, popen, log, stop_signal)
        self.live.append(process)
        process.pids()
        return process

    def stop(self, process: Process, timeout: float = 5.0) -> None:
        """Stop signal to the root, wait; then TERM and KILL whatever is left, by PID."""
        members = process.pids()
        if process.running():
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, process.stop_signal)
            try:
                process.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGKILL)
                process.popen.wait(5)
        leftovers = [
            seen
            for pid in members
            if (seen := process.seen.get(pid)) and is_alive(pid, seen.started)
        ]
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for seen in leftovers:
                if is_alive(seen.pid, seen.started):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(seen.pid, sig)
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline and any(
                is_alive(seen.pid, seen.started) for seen in leftovers
            ):
                time.sleep(0.05)
        self.record.extend(process.seen.values())
        if process in self.live:
            self.live.remove(process)

    def stop_all(self) -> None:
        for process in reversed(list(self.live)):
            try:
                self.stop(process)
            except Exception as error:  # keep stopping the others
                print(f"bench: could not stop {process.name} ({process.pid}): {error}")

    def survivors(self) -> list[Started]:
        return [seen for seen in self.record if is_alive(seen.pid, seen.started)]
