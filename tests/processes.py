"""Real processes for tests: start, wait for the port, stop by PID.

Every server a test needs (the proxy under gunicorn, mock instances, the StatsD
daemon) runs as a child process on 127.0.0.1, started and stopped by PID with
devkit, the tooling's process library: ``start_mock``, ``Proxy`` and
``write_config`` are devkit.lbproxy's, the config in YAML here. Nothing is ever
stopped by name.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import shutil
import signal
import socket
import struct
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

from devkit import lbproxy
from devkit.lbproxy import REPO, start_mock
from devkit.processes import Server, StartError, free_port, wait_until

__all__ = [
    "REPO",
    "Dnsmasq",
    "PrometheusServer",
    "Proxy",
    "RawServer",
    "RedisServer",
    "StatsdDaemon",
    "free_port",
    "serving_worker",
    "serving_workers",
    "start_mock",
    "start_ws_upstream",
    "write_config",
]


def start_ws_upstream(name: str, port: int | None = None) -> Server:
    """The WebSocket echo upstream (tests/ws_upstream.py) in its own process."""
    port = port or free_port()
    args = [sys.executable, "-m", "tests.ws_upstream", "--port", str(port)]
    return Server(name, args, port, cwd=REPO)


def write_config(directory: Path, services: list[dict], **proxy: object) -> Path:
    """devkit's proxy config on free ports, as YAML: tests edit its text."""
    dump = functools.partial(yaml.safe_dump, sort_keys=False)
    return lbproxy.write_config(directory, services, dump=dump, **proxy)


class Proxy(lbproxy.Proxy):
    """devkit's proxy under gunicorn, its ports read from write_config's YAML."""

    def __init__(self, config: Path, workers: int = 2, env: dict | None = None):
        ports = lbproxy.config_ports(config, load=yaml.safe_load)
        super().__init__(config, workers, env, ports=ports)


def serving_worker(proxy: Server, client: socket.socket) -> int | None:
    """The PID of the proxy worker that accepted ``client`` (a connection to the
    proxy that has had an answer): /proc/net/tcp names the accepted socket's
    inode, /proc/PID/fd says which worker holds it."""
    return serving_workers(proxy, [client])[0]


def serving_workers(proxy: Server, clients: list[socket.socket]) -> list[int | None]:
    """``serving_worker`` for many connections at once: one read of each table."""
    inodes: dict[int, str] = {}  # the client's port: its accepted socket's inode
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = (int(end.split(":")[1], 16) for end in fields[1:3])
        if local == proxy.port:
            inodes[remote] = f"socket:[{fields[9]}]"
    holders: dict[str, int] = {}
    for pid in proxy.children():
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    holders[os.readlink(fd)] = pid
    return [holders.get(inodes.get(client.getsockname()[1], "")) for client in clients]


class RawServer:
    """A misbehaving upstream on a thread: ``reset`` reads the request, then
    closes with a TCP reset and no answer (reading first makes sure the request
    was sent: a reset during the connect would be a refused connection instead);
    ``blackhole`` accepts and never answers; ``reply``
    reads a request and answers ``reply`` bytes as they are, then closes."""

    def __init__(self, behaviour: str, reply: bytes = b""):
        self.behaviour = behaviour
        self.reply = reply
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.accepted = 0
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.accepted += 1
            if self.behaviour == "reset":
                conn.settimeout(5)
                with contextlib.suppress(OSError):
                    conn.recv(65536)
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.close()
            elif self.behaviour == "reply":
                conn.recv(65536)
                conn.sendall(self.reply)
                conn.close()
            else:
                self.held.append(conn)

    def stop(self) -> None:
        self.listener.close()
        for conn in self.held:
            conn.close()


class Dnsmasq(Server):
    """A real DNS server (Debian's dnsmasq-base, scripts/install/dns.sh) answering
    for ``svc.test`` from a hosts file with a TTL of 1 s. ``set`` rewrites the
    file and sends SIGHUP; ``srv``: ``--srv-host`` values (fixed for its life)."""

    def __init__(self, directory: Path, records: dict[str, list[str]], srv: tuple[str, ...] = ()):
        directory.chmod(0o755)  # dnsmasq reads the file again as nobody on SIGHUP
        port = free_port()
        self.hosts = directory / f"dns-hosts-{port}"
        self._write(records)
        args = [
            shutil.which("dnsmasq") or "/usr/sbin/dnsmasq",  # sbin: off a user's PATH
            "--keep-in-foreground",
            f"--port={port}",
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            "--no-resolv",
            "--no-hosts",
            f"--addn-hosts={self.hosts}",
            "--local=/svc.test/",
            "--local-ttl=1",
            "--pid-file=",
            "--log-facility=-",
            *(f"--srv-host={record}" for record in srv),
        ]
        super().__init__("dnsmasq", args, port)

    def _write(self, records: dict[str, list[str]]) -> None:
        lines = [f"{ip} {name}" for name, ips in records.items() for ip in ips]
        self.hosts.write_text("".join(line + "\n" for line in lines))
        self.hosts.chmod(0o644)

    def set(self, records: dict[str, list[str]]) -> None:
        self._write(records)
        self.signal(signal.SIGHUP)


class PrometheusServer(Server):
    """A real Prometheus (Debian's package, scripts/install/prometheus.sh) on a free
    port, scraping ``targets`` (host:port) every second into a temp TSDB."""

    def __init__(self, directory: Path, targets: list[str], rules: Path | None = None):
        port = free_port()
        home = directory / f"prometheus-{port}"
        home.mkdir(parents=True)
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": "lbproxy", "static_configs": [{"targets": targets}]}],
        }
        if rules is not None:
            config["rule_files"] = [str(rules)]
        (home / "prometheus.yml").write_text(yaml.safe_dump(config))
        args = [
            shutil.which("prometheus") or "/usr/bin/prometheus",
            f"--config.file={home / 'prometheus.yml'}",
            f"--storage.tsdb.path={home / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ]
        super().__init__("prometheus", args, port)
        self.url = f"http://127.0.0.1:{port}"
        # The web port opens before the TSDB: queries answer 503 until /-/ready does not.
        if not wait_until(self.ready, self, 30, "/-/ready"):
            self.stop()
            raise StartError("prometheus: /-/ready did not answer 200 within 30 s", self.output())

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=5) as answer:
                return answer.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def query(self, promql: str) -> list:
        """An instant query's result vector ([] when nothing matches)."""
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
        with urllib.request.urlopen(url, timeout=5) as answer:
            return json.load(answer)["data"]["result"]


class RedisServer(Server):
    """A real redis-server (Debian's redis-server package, scripts/install/redis.sh),
    in memory only, on ``port`` (a free one by default; the same one for a restart)."""

    def __init__(self, port: int | None = None):
        port = port or free_port()
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
        super().__init__("redis", [*args, "--appendonly", "no"], port)

    def command(self, *words: str) -> str:
        """One command over RESP, its first reply line (``dbsize`` -> ``:0``)."""
        request = f"*{len(words)}\r\n" + "".join(f"${len(w)}\r\n{w}\r\n" for w in words)
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(request.encode())
            return sock.recv(65536).decode().split("\r\n")[0]


STATSD_JS = REPO / "tools" / "statsd" / "node_modules" / "statsd" / "stats.js"


class StatsdDaemon(Server):
    """The real StatsD daemon (npm statsd, scripts/install/statsd.sh), no backend,
    flushing every 10 minutes so its counters hold everything a test sent."""

    def __init__(self, directory: Path):
        self.udp_port = free_port()
        admin = free_port()
        config = directory / f"statsd-{admin}.js"
        config.write_text(
            f"{{ port: {self.udp_port}, address: '127.0.0.1', mgmt_port: {admin},"
            " mgmt_address: '127.0.0.1', flushInterval: 600000, backends: [] }"
        )
        super().__init__("statsd", ["node", str(STATSD_JS), str(config)], admin, cwd=REPO)

    def admin(self, command: str) -> str:
        """A management command's answer (``counters``, ``timers``, ``gauges``)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(command.encode() + b"\n")
            answer = b""
            while b"END" not in answer:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                answer += chunk
        return answer.decode()

    def counters(self) -> dict[str, float]:
        text = self.admin("counters")
        return {name: float(value) for name, value in re.findall(r"'([^']+)': ([\d.]+)", text)}

    def timer_counts(self) -> dict[str, int]:
        """How many values each timer holds (util.inspect abbreviates long arrays)."""
        counts = {}
        for name, body in re.findall(r"'([^']+)': \[(.*?)\]", self.admin("timers"), re.S):
            more = re.search(r"\.\.\. (\d+) more item", body)
            listed = re.sub(r"\.\.\. \d+ more items?", "", body)
            counts[name] = len(re.findall(r"[\d.]+", listed)) + (int(more.group(1)) if more else 0)
        return counts
