"""Real processes for tests: start, wait for the port, stop by PID.

Every server a test needs (the proxy under gunicorn, mock instances) runs as a
child process on 127.0.0.1. Nothing is ever stopped by name.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"process exited with {process.returncode} before port {port} opened"
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"port {port} did not open within {timeout} s")


class Server:
    """A child process serving on ``port``, with its output in a log file."""

    def __init__(self, args: list[str], port: int, env: dict | None = None, name: str = "server"):
        self.port = port
        self.name = name
        self.log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - lives as long as the process
            prefix=f"lbproxy-{name}-", suffix=".log", delete=False
        )
        self.process = subprocess.Popen(
            args,
            cwd=REPO,
            env={**os.environ, **(env or {})},
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.pid = self.process.pid
        try:
            wait_for_port(port, self.process)
        except Exception:
            self.stop()
            raise RuntimeError(f"{name} did not start:\n{self.output()}") from None

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def children(self) -> list[int]:
        path = Path(f"/proc/{self.pid}/task/{self.pid}/children")
        return [int(pid) for pid in path.read_text().split()] if path.exists() else []

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.log.close()
        return self.process.returncode


def start_mock(name: str, port: int | None = None, keepalive: int = 2, status: int = 200) -> Server:
    port = port or free_port()
    args = [sys.executable, "-m", "mock", "--port", str(port), "--name", name]
    args += ["--keepalive", str(keepalive), "--status", str(status)]
    return Server(args, port, name=f"mock-{name}")


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


def write_config(directory: Path, services: list[dict], **proxy: object) -> Path:
    """A proxy.yaml on free ports; returns its path (ports readable back from it)."""
    document = {
        "proxy": {
            "listen": {"address": "127.0.0.1", "port": free_port()},
            "admin": {"address": "127.0.0.1", "port": free_port()},
            **proxy,
            "services": services,
        }
    }
    path = directory / f"proxy-{document['proxy']['listen']['port']}.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


class Proxy(Server):
    """lbproxy under real gunicorn, started the documented way: gunicorn -c gunicorn.conf.py."""

    def __init__(self, config: Path, workers: int = 2, env: dict | None = None):
        document = yaml.safe_load(config.read_text())["proxy"]
        self.config = config
        self.admin_port = document["admin"]["port"]
        env = {"PROXY_CONFIG": str(config), "PROXY_WORKERS": str(workers), **(env or {})}
        args = [str(VENV_BIN / "gunicorn"), "-c", "gunicorn.conf.py"]
        super().__init__(args, document["listen"]["port"], env=env, name="proxy")
        wait_for_port(self.admin_port, self.process)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


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
        super().__init__(["node", str(STATSD_JS), str(config)], admin, name="statsd")

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
