"""How fast the host lets the VM run, sampled during every measured run.

A VM shares its host. A host that gives it less CPU slows every process in it
alike, and /proc does not show it: steal time stayed near 0 here while one
fixed loop took 1.7 times as long, in spells of one to several seconds, idle or
under load. A probe between sessions misses the spells inside a measured run.

So a thread of the harness times one small fixed loop (``loop_ms``) every
INTERVAL_S through each measured run (``Monitor``). It counts the thread's CPU
time, not wall time: under load the loop waits for a CPU, and that wait says
nothing about the host. The run's reference is the REFERENCE_PCT percentile of
all its samples (``reference``): the host's top speed if it gave it at least
that share of the run, and never one odd sample. A sample more than SLOW times
the reference is slow; a measured run with more than SLOW_SHARE of its samples
slow was slowed by the host, and a full run measures it again
(harness.Runner.measure_quietly).
"""

from __future__ import annotations

import threading
import time

LOOP = 20_000  # iterations: 1-2 ms of CPU, about 1% of one CPU at INTERVAL_S
INTERVAL_S = 0.15
SLOW = 1.15  # a sample over the reference by more than 15% is slow
SLOW_SHARE = 0.10  # a measured run with more than 10% of its samples slow was slowed
REFERENCE_PCT = 5  # the reference: this percentile of the run's samples
CALIBRATE_S = 5.0  # sampled before the first session: the run's first reference
FAST_RUN = 3  # samples in a row within SLOW: the host is fast again


def loop_ms() -> float:
    """CPU ms this thread takes to run the fixed loop once."""
    start = time.thread_time()
    total = 0
    for number in range(LOOP):
        total += number * number
    return (time.thread_time() - start) * 1000


class Monitor:
    """``loop_ms()`` every ``interval`` s in a thread, from start() to stop()."""

    def __init__(self, interval: float = INTERVAL_S) -> None:
        self.interval = interval
        self.samples: list[float] = []
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="hostspeed", daemon=True)

    def start(self) -> Monitor:
        self._thread.start()
        return self

    def _sample(self) -> None:
        while True:
            self.samples.append(round(loop_ms(), 3))
            if self._stopped.wait(self.interval):
                return

    def stop(self) -> list[float]:
        self._stopped.set()
        self._thread.join()
        return self.samples


def sample_for(seconds: float, interval: float = INTERVAL_S) -> list[float]:
    """Samples taken over ``seconds`` (the calibration before the first session)."""
    monitor = Monitor(interval).start()
    try:
        time.sleep(seconds)
    finally:
        monitor.stop()
    return monitor.samples


def reference(samples: list[float]) -> float:
    """The REFERENCE_PCT percentile of samples (0.0: none)."""
    if not samples:
        return 0.0
    return sorted(samples)[len(samples) * REFERENCE_PCT // 100]


def slow_share(samples: list[float], reference: float) -> float | None:
    """The share of samples over ``reference`` by more than SLOW (None: no sample)."""
    if not samples:
        return None
    limit = reference * SLOW
    return sum(sample > limit for sample in samples) / len(samples)


def slow_pct(samples: list[float], reference: float) -> float | None:
    """``slow_share`` as a percentage to 0.1, as rows record it (None: no sample)."""
    share = slow_share(samples, reference)
    return None if share is None else round(100 * share, 1)


def slowed(pct: float | None) -> bool:
    """Whether a measured run with this % of slow samples was slowed (None: not sampled)."""
    return pct is not None and pct > 100 * SLOW_SHARE


def wait_until_fast(reference: float, limit: float, interval: float = INTERVAL_S) -> float:
    """Sample until FAST_RUN samples in a row are within SLOW of ``reference``, or
    ``limit`` s pass. Returns the seconds waited."""
    started = time.monotonic()
    in_a_row = 0
    while in_a_row < FAST_RUN and time.monotonic() - started < limit:
        in_a_row = in_a_row + 1 if loop_ms() <= reference * SLOW else 0
        if in_a_row < FAST_RUN:
            time.sleep(interval)
    return time.monotonic() - started
