"""The local monitoring stack: StatsD (graphite backend) → carbon-cache → graphite-web.

    monitoring/stack start     start the three processes in the background, print where to look
    monitoring/stack status    which are running (by PID), and the URLs
    monitoring/stack stop      stop them by PID (SIGTERM, then SIGKILL after 10 s)
    monitoring/stack run       the same in the foreground; Ctrl-C stops it

Everything the stack writes (generated configs, whisper files, the Django
SQLite DB, logs, PIDs) lives in its state directory: ``monitoring/state/``
(gitignored) unless ``--state DIR``. Nothing in /etc or /var is used: the
Debian packages' own services are not touched. Every port is on 127.0.0.1.

- StatsD: npm ``statsd`` 0.9.0 from ``tools/statsd`` (scripts/install/statsd.sh),
  UDP ``--statsd-port`` (default 8125, lbproxy's default), admin ``+1``; it
  flushes every ``--flush`` seconds (default 10) to carbon's plaintext port,
  with ``legacyNamespace: false``: counters ``stats.counters.<name>.{count,rate}``,
  timers ``stats.timers.<name>.{count,mean,upper_99,...,histogram.bin_<ms>}``,
  gauges ``stats.gauges.<name>``.
- carbon-cache (Debian ``graphite-carbon``): plaintext ``--carbon-port``
  (default 2003), pickle ``+1``, cache query ``+2`` (graphite-web reads the
  points not yet on disk there); retentions ``<flush>s:6h,1m:7d,10m:1y`` so
  that one StatsD flush is one whisper point.
- graphite-web (Debian, Django under /usr/bin/python3): Django's runserver on
  ``--web-port`` (default 8013), settings generated into the state directory.

Install what it runs first: scripts/install/monitoring.sh (idempotent: StatsD
from npm, graphite-carbon and graphite-web with apt); ``start`` names it and
exits 2 when one is missing.

Standard library only (it runs under any python3); processes are started and
stopped by PID with devkit.processes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

from devkit.processes import Spawned, StartError, spawn, stop_pids, wait_for_port, wait_until

REPO = Path(__file__).resolve().parent.parent
DEFAULT_STATE = REPO / "monitoring" / "state"
STATSD_JS = REPO / "tools" / "statsd" / "node_modules" / "statsd" / "stats.js"
# Installs all three (StatsD from npm into tools/statsd, carbon and graphite-web from apt).
INSTALLER = "scripts/install/monitoring.sh"
SYSTEM_PYTHON = "/usr/bin/python3"
CARBON_CACHE = "/usr/bin/carbon-cache"
GRAPHITE_WEB = Path("/usr/lib/python3/dist-packages/graphite")
SETTINGS_MODULE = "lbproxy_graphite_settings"  # graphite's local_settings
DJANGO_MODULE = "lbproxy_graphite_django"  # Django's settings: graphite's, plus static files

# Latency histogram bins (ms, non-inclusive upper limits) for every service-level
# timer: the latency SLI counts the requests below its threshold with them, so
# every threshold slo.yaml may use must be one of these limits.
HISTOGRAM_BINS = [5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, "inf"]
PERCENTILES = [50, 90, 99]
# The timer metrics StatsD sends (its calculatedTimerMetrics): upper_percent is
# upper_50/upper_90/upper_99. Fewer whisper files than all of them.
TIMER_METRICS = [
    "count",
    "count_ps",
    "lower",
    "upper",
    "mean",
    "median",
    "upper_percent",
    "histogram",
]

ORDER = ("carbon", "web", "statsd")


@dataclass
class Ports:
    statsd: int = 8125
    statsd_admin: int = 8126
    carbon_line: int = 2003
    carbon_pickle: int = 2004
    carbon_query: int = 7002
    web: int = 8013


@dataclass
class StackInfo:
    """What ``start`` leaves in STATE/run/stack.json for ``status`` and ``stop``."""

    state: str
    flush: float
    retentions: str
    ports: Ports
    pids: dict[str, int] = field(default_factory=dict)


def retentions_for(flush: float) -> str:
    """One whisper point per StatsD flush for 6 h, then 1 min for 7 days, 10 min for a year."""
    step = int(flush)
    if step != flush or step < 1 or 60 % step:
        raise ValueError(f"flush interval must be whole seconds dividing 60, not {flush}")
    return f"{step}s:6h,1m:7d,10m:1y"


class Stack:
    def __init__(
        self,
        state: Path = DEFAULT_STATE,
        ports: Ports | None = None,
        flush: float = 10,
        retentions: str | None = None,
    ):
        self.state = Path(state).resolve()
        self.ports = ports or Ports()
        self.flush = flush
        self.retentions = retentions or retentions_for(flush)
        self.processes: dict[str, Spawned] = {}

    # -- paths and URLs ------------------------------------------------------
    @property
    def whisper_dir(self) -> Path:
        return self.state / "storage" / "whisper"

    @property
    def info_file(self) -> Path:
        return self.state / "run" / "stack.json"

    @property
    def graphite_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.web}"

    # -- configuration -------------------------------------------------------
    def write_configs(self) -> None:
        for sub in ("carbon", "storage/whisper", "storage/lists", "web", "logs", "run"):
            (self.state / sub).mkdir(parents=True, exist_ok=True)
        self._write_statsd()
        self._write_carbon()
        self._write_web()

    def _write_statsd(self) -> None:
        config = {
            "address": "127.0.0.1",
            "port": self.ports.statsd,
            "mgmt_address": "127.0.0.1",
            "mgmt_port": self.ports.statsd_admin,
            "flushInterval": int(self.flush * 1000),
            "backends": ["./backends/graphite"],
            "graphiteHost": "127.0.0.1",
            "graphitePort": self.ports.carbon_line,
            "graphiteProtocol": "text",
            "graphite": {"legacyNamespace": False, "globalPrefix": "stats"},
            "percentThreshold": PERCENTILES,
            "calculatedTimerMetrics": TIMER_METRICS,
            # Service-level timers get the histogram; per-host ones do not (the
            # SLIs are per service, and each bin is one more whisper file).
            "histogram": [
                {"metric": ".hosts.", "bins": []},
                {"metric": "", "bins": HISTOGRAM_BINS},
            ],
            # Gauges are per worker PID: drop a gauge nobody updated for ~10 s,
            # so a restarted worker's old PID stops reporting its last value.
            "deleteGauges": True,
            "gaugesMaxTTL": max(1, math.ceil(10 / self.flush)),
        }
        (self.state / "statsd.js").write_text(json.dumps(config, indent=2) + "\n")

    def _write_carbon(self) -> None:
        state = self.state
        (state / "carbon" / "carbon.conf").write_text(
            f"""# Generated by monitoring/stack.py for this state directory only.
[cache]
STORAGE_DIR = {state}/storage/
LOCAL_DATA_DIR = {state}/storage/whisper/
WHITELISTS_DIR = {state}/storage/lists/
CONF_DIR = {state}/carbon/
LOG_DIR = {state}/logs/carbon/
PID_DIR = {state}/run/
ENABLE_LOGROTATION = False
MAX_CACHE_SIZE = inf
MAX_UPDATES_PER_SECOND = 1000
# Every new metric must get its file at once: a create limit would hide a
# series from graphite-web (it finds metrics on disk) for minutes.
MAX_CREATES_PER_MINUTE = inf
LINE_RECEIVER_INTERFACE = 127.0.0.1
LINE_RECEIVER_PORT = {self.ports.carbon_line}
ENABLE_UDP_LISTENER = False
PICKLE_RECEIVER_INTERFACE = 127.0.0.1
PICKLE_RECEIVER_PORT = {self.ports.carbon_pickle}
CACHE_QUERY_INTERFACE = 127.0.0.1
CACHE_QUERY_PORT = {self.ports.carbon_query}
USE_FLOW_CONTROL = True
LOG_UPDATES = False
LOG_CREATES = False
LOG_CACHE_HITS = False
LOG_LISTENER_CONN_SUCCESS = False
CACHE_WRITE_STRATEGY = sorted
WHISPER_AUTOFLUSH = False
# Sparse files: a whisper file of 6 h at 2-10 s plus a year of 10 min takes
# ~0.9 MB if allocated; sparse, only what is written.
WHISPER_SPARSE_CREATE = True
WHISPER_FALLOCATE_CREATE = False
# No tag database: carbon would post every new metric to a graphite-web on port 80.
ENABLE_TAGS = False
"""
        )
        (state / "carbon" / "storage-schemas.conf").write_text(
            f"""# One point per StatsD flush ({self.flush:g} s) first: StatsD's docs/graphite.md.
[carbon]
pattern = ^carbon\\.
retentions = 60s:7d

[stats]
pattern = .*
retentions = {self.retentions}
"""
        )
        # How points roll up into the coarser archives (StatsD's docs/graphite.md).
        (state / "carbon" / "storage-aggregation.conf").write_text(
            """[min]
pattern = \\.lower$
xFilesFactor = 0.1
aggregationMethod = min

[max]
pattern = \\.upper(_\\d+)?$
xFilesFactor = 0.1
aggregationMethod = max

[in_flight]
pattern = \\.in_flight\\.
xFilesFactor = 0.1
aggregationMethod = max

[count]
pattern = \\.(count|sum|bin_[0-9a-z_]+)$
xFilesFactor = 0
aggregationMethod = sum

[default_average]
pattern = .*
xFilesFactor = 0.3
aggregationMethod = average
"""
        )

    def _write_web(self) -> None:
        state = self.state
        settings = f'''"""graphite-web settings, generated by monitoring/stack.py."""
SECRET_KEY = {os.urandom(24).hex()!r}
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
TIME_ZONE = "UTC"
LOG_ROTATION = False
DEFAULT_XFILES_FACTOR = 0
GRAPHITE_ROOT = "/usr/share/graphite-web"
STATIC_ROOT = {str(state / "web" / "static")!r}  # unused (no collectstatic)
CONF_DIR = {str(state / "web")!r}
STORAGE_DIR = {str(state / "storage")!r}
WHISPER_DIR = {str(self.whisper_dir)!r}
STANDARD_DIRS = [WHISPER_DIR]
INDEX_FILE = {str(state / "storage" / "index")!r}
LOG_DIR = {str(state / "logs" / "web")!r}
CARBONLINK_HOSTS = ["127.0.0.1:{self.ports.carbon_query}:a"]
DATABASES = {{
    "default": {{
        "NAME": {str(state / "web" / "graphite.db")!r},
        "ENGINE": "django.db.backends.sqlite3",
    }}
}}
FUNCTION_PLUGINS = []
'''
        (state / "logs" / "web").mkdir(parents=True, exist_ok=True)
        (state / "web" / f"{SETTINGS_MODULE}.py").write_text(settings)
        # graphite.settings sets STATICFILES_DIRS after reading local_settings, to a
        # directory Debian does not ship: runserver --insecure serves the UI's
        # static files from Debian's directory with this override.
        (state / "web" / f"{DJANGO_MODULE}.py").write_text(
            "from graphite.settings import *  # noqa: F403\n"
            'STATICFILES_DIRS = ("/usr/share/graphite-web/static",)\n'
            'SILENCED_SYSTEM_CHECKS = ["models.W042", "admin.W411"]\n'
        )

    def web_env(self) -> dict[str, str]:
        # A clean environment for the system python: no venv, no PYTHONPATH of ours.
        env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME")}
        env["PYTHONPATH"] = str(self.state / "web")
        env["DJANGO_SETTINGS_MODULE"] = DJANGO_MODULE
        env["GRAPHITE_SETTINGS_MODULE"] = SETTINGS_MODULE
        return env

    def commands(self) -> dict[str, list[str]]:
        return {
            "carbon": [
                SYSTEM_PYTHON,
                CARBON_CACHE,
                "--nodaemon",
                "--debug",
                f"--config={self.state / 'carbon' / 'carbon.conf'}",
                f"--pidfile={self.state / 'run' / 'carbon-cache.pid'}",
                "start",
            ],
            "web": [
                SYSTEM_PYTHON,
                "-m",
                "django",
                "runserver",
                "--noreload",
                "--insecure",
                f"127.0.0.1:{self.ports.web}",
            ],
            "statsd": ["node", str(STATSD_JS), str(self.state / "statsd.js")],
        }

    # -- processes -----------------------------------------------------------
    def check_installed(self) -> None:
        missing = [
            what
            for what, path in (
                ("StatsD", STATSD_JS),
                ("carbon-cache", Path(CARBON_CACHE)),
                ("graphite-web", GRAPHITE_WEB / "settings.py"),
            )
            if not path.exists()
        ]
        if missing:
            raise StackError(f"not installed: {', '.join(missing)}; install with: {INSTALLER}")

    def check_ports(self) -> None:
        taken = []
        for name, port in asdict(self.ports).items():
            kind = socket.SOCK_DGRAM if name == "statsd" else socket.SOCK_STREAM
            with socket.socket(socket.AF_INET, kind) as sock:
                # As the servers do: a closed connection in TIME_WAIT does not count.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    taken.append(f"{name} {port}")
        if taken:
            raise StackError("ports in use: " + ", ".join(taken))

    def start(self, timeout: float = 60.0) -> None:
        """Start carbon-cache, then graphite-web (after its DB migration), then StatsD."""
        self.check_installed()
        self.check_ports()
        self.write_configs()
        deadline = time.monotonic() + timeout
        try:
            self._spawn("carbon")
            self._wait_port("carbon", self.ports.carbon_line, deadline)
            self._wait_port("carbon", self.ports.carbon_query, deadline)
            self.migrate(max(5.0, deadline - time.monotonic()))
            self._spawn("web")
            self._wait_http("web", f"{self.graphite_url}/render?target=stats&format=json", deadline)
            self._spawn("statsd")
            self._wait_port("statsd", self.ports.statsd_admin, deadline)
        except BaseException:
            self.stop()
            raise
        self.save_info()

    def migrate(self, timeout: float) -> None:
        """graphite-web's SQLite DB (users, dashboards, tags): Django's migrate, once."""
        if (self.state / "web" / "graphite.db").exists():
            return
        log = self.state / "logs" / "migrate.log"
        with log.open("wb") as out:
            done = subprocess.run(
                [SYSTEM_PYTHON, "-m", "django", "migrate", "--noinput", "--run-syncdb"],
                env=self.web_env(),
                cwd=self.state,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                check=False,
            )
        if done.returncode != 0:
            (self.state / "web" / "graphite.db").unlink(missing_ok=True)
            raise StackError(f"graphite-web migrate failed:\n{log.read_text()[-3000:]}")

    def _spawn(self, name: str) -> None:
        log = self.state / "logs" / f"{name}.log"
        env = self.web_env() if name == "web" else dict(os.environ)
        self.processes[name] = spawn(name, self.commands()[name], log, env=env, cwd=self.state)

    def _wait_port(self, name: str, port: int, deadline: float) -> None:
        wait_for_port(port, self.processes[name], max(0.0, deadline - time.monotonic()))

    def _wait_http(self, name: str, url: str, deadline: float) -> None:
        def answers() -> bool:
            with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=5) as answer:
                return answer.status == 200
            return False

        timeout = max(0.0, deadline - time.monotonic())
        if not wait_until(answers, self.processes[name], timeout, url, interval=0.2):
            raise StackError(f"{name}: {url} did not answer in time")

    @property
    def pids(self) -> dict[str, int]:
        return {name: process.pid for name, process in self.processes.items()}

    def save_info(self) -> None:
        info = StackInfo(str(self.state), self.flush, self.retentions, self.ports, self.pids)
        self.info_file.write_text(json.dumps(asdict(info), indent=2) + "\n")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the processes this object started (reverse order), by PID."""
        for name in reversed(ORDER):
            if name in self.processes:
                self.processes[name].stop(timeout)
        self.info_file.unlink(missing_ok=True)

    def urls(self) -> list[str]:
        web = self.graphite_url
        return [
            f"graphite-web   {web}/  (composer; browse metrics under stats.*)",
            f"render API     {web}/render?target=stats.counters.lbproxy.*.status.*.rate"
            "&from=-15min&format=png",
            f"StatsD         udp 127.0.0.1:{self.ports.statsd} (admin tcp "
            f"{self.ports.statsd_admin}): STATSD_HOST=127.0.0.1 STATSD_PORT={self.ports.statsd}",
            f"carbon         plaintext tcp 127.0.0.1:{self.ports.carbon_line}, "
            f"whisper files in {self.whisper_dir}",
            f"logs           {self.state / 'logs'}",
        ]


class StackError(Exception):
    pass


# -- the detached stack: PIDs read back from stack.json ------------------------
def load_info(state: Path) -> StackInfo | None:
    path = Path(state).resolve() / "run" / "stack.json"
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    data["ports"] = Ports(**data["ports"])
    return StackInfo(**data)


def ours(pid: int, state: str) -> bool:
    """Is ``pid`` still the process we started (its command line names our state dir)?

    StatsD's and carbon's command lines hold a path inside the state dir; so
    does graphite-web's environment (PYTHONPATH). A PID reused by another
    process after ours died is never signalled.
    """
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        if state in cmdline:
            return True
        environ = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
    except OSError:
        return False
    return f"PYTHONPATH={state}/web" in environ.split("\0")


def stop_detached(info: StackInfo, timeout: float = 10.0) -> list[str]:
    report = []
    for name in reversed(ORDER):
        pid = info.pids.get(name)
        if pid is None:
            continue
        if not ours(pid, info.state):
            report.append(f"{name}: pid {pid} not running")
            continue
        # In reverse start order, each one gone before the next is signalled.
        if stop_pids([pid], lambda each: ours(each, info.state), grace=timeout):
            report.append(f"{name}: pid {pid} killed (SIGKILL)")
        else:
            report.append(f"{name}: pid {pid} stopped")
    (Path(info.state) / "run" / "stack.json").unlink(missing_ok=True)
    return report


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="monitoring/stack",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("command", choices=["start", "stop", "status", "run"])
    parser.add_argument(
        "--state",
        type=Path,
        default=DEFAULT_STATE,
        help="state directory (default monitoring/state)",
    )
    parser.add_argument(
        "--flush",
        type=int,
        default=10,
        help="StatsD flush interval = first retention step, s (default 10)",
    )
    parser.add_argument("--statsd-port", type=int, default=8125, help="StatsD UDP port; admin +1")
    parser.add_argument(
        "--carbon-port",
        type=int,
        default=2003,
        help="carbon plaintext port; pickle +1, cache query +2",
    )
    parser.add_argument("--web-port", type=int, default=8013, help="graphite-web port")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    state = args.state.resolve()
    info = load_info(state)
    if args.command == "status":
        if info is None:
            print(f"monitoring stack: not started (no {state}/run/stack.json)")
            return 3
        running = {name: ours(pid, info.state) for name, pid in info.pids.items()}
        for name, pid in info.pids.items():
            print(f"{name:7} pid {pid:<8} {'running' if running[name] else 'NOT running'}")
        print("\n".join(Stack(state, info.ports, info.flush, info.retentions).urls()))
        return 0 if all(running.values()) else 1
    if args.command == "stop":
        if info is None:
            print("monitoring stack: not running")
            return 0
        print("\n".join(stop_detached(info)))
        return 0
    if info is not None and any(ours(pid, info.state) for pid in info.pids.values()):
        print(f"monitoring stack: already running (monitoring/stack status; state {state})")
        return 1
    ports = Ports(
        args.statsd_port,
        args.statsd_port + 1,
        args.carbon_port,
        args.carbon_port + 1,
        args.carbon_port + 2,
        args.web_port,
    )
    stack = Stack(state, ports, flush=args.flush)
    try:
        stack.start()
    except (StackError, StartError, ValueError) as error:
        print(f"monitoring stack: {error}", file=sys.stderr)
        return 2
    pids = ", ".join(f"{name} {pid}" for name, pid in stack.pids.items())
    print(f"monitoring stack: started ({pids}); StatsD flushes every {args.flush} s")
    print("\n".join(stack.urls()))
    if args.command == "start":
        print("stop it with: monitoring/stack stop")
        return 0
    print("Ctrl-C stops it")

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    # Ctrl-C, also when started in the background by a script (SIGINT ignored
    # there), and SIGTERM: stop the stack the same way.
    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    try:
        while all(process.running() for process in stack.processes.values()):
            time.sleep(1)
        dead = [name for name, process in stack.processes.items() if not process.running()]
        print(f"monitoring stack: {', '.join(dead)} exited; stopping", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        stack.stop()
        print("monitoring stack: stopped")


if __name__ == "__main__":
    sys.exit(main())
