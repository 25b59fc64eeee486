"""The upstream and every peer: generated configs and start commands.

All of them listen on 127.0.0.1 on free ports, keep their configs, logs, pid
files and temp files in the run's temp dir, and never touch /etc/nginx,
/etc/haproxy or a system service.

  upstream   nginx, 1 worker, serving static files /1k, /100k, /1m (sendfile)
  direct     the client straight to the upstream
  haproxy    HAProxy, nbthread 2, keep-alive to the upstream (its default http-reuse safe)
  nginx      nginx, 2 workers, proxy_pass to an upstream block with keepalive 128
  proxypy    proxy.py --threaded, 2 acceptors, reverse proxy (bench/plugins/bench_proxypy.py)
  mitmdump   mitmdump --mode reverse:http://upstream -q
  aiohttp    aiohttp's server and client on uvloop, 2 processes, one SO_REUSEPORT
             listener each (bench/plugins/bench_aiohttp.py)
  uvicorn    uvicorn --loop uvloop --http httptools --workers 2, a raw ASGI app
             forwarding with aiohttp's client (bench/plugins/bench_asgi.py)
  granian    granian --interface asgi --workers 2, the same ASGI app
  lbproxy*   gunicorn -c gunicorn.conf.py from the repo root (PROXY_CONFIG, PROXY_WORKERS),
             as its image runs: python -OO from bytecode compiled beforehand
  *-tls      the tls section's peers: HAProxy and lbproxy-2w with one TLS listener
             (ECDSA P-256 certificate, ALPN h2 and http/1.1; bench/tls.py), plain
             HTTP to the same upstream
  ws-*       the websocket section's peers, to the WebSocket echo upstream
             (tests/ws_upstream.py): direct, nginx (2 workers, Upgrade and
             Connection set) and lbproxy-2w with one service (bench/wsload.py)

No peer writes an access log except lbproxy in its "features on" variants,
which also sends StatsD metrics (to bench/sink.py) when the build supports it;
its "off" variants have PROXY_ACCESS_LOG=off and no StatsD host.

The upstream also serves /probe/1k for the correctness check every proxy passes
before it is measured (harness.check_peer): a 1 KiB body of every byte value,
a Content-Type of its own, and the request's X-Bench-Probe header and query
echoed back in response headers.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from bench import tls
from devkit.lbproxy import image_python_env

REPO = Path(__file__).resolve().parent.parent
PEERS_VENV = REPO / "bench" / ".venv-peers"
PLUGINS = REPO / "bench" / "plugins"
LBPROXY_GUNICORN = REPO / ".venv" / "bin" / "gunicorn"

BODIES = {"/1k": 1024, "/100k": 100 * 1024, "/1m": 1024 * 1024}
BENCH_DOMAIN = "bench.test"
# The correctness check's body (every byte value: a proxy that decodes, re-encodes
# or cuts it shows) and the type it is served with (no server's default).
PROBE_PATH = "/probe/1k"
PROBE_BODY = bytes(range(256)) * 4
PROBE_TYPE = "application/x-bench-probe"

# Environment variables lbproxy's observability reads (issue 5); cleared from the
# inherited environment, then set by the variant.
FEATURE_ENV = (
    "STATSD_HOST",
    "STATSD_PORT",
    "STATSD_PREFIX",
    "GUNICORN_CMD_ARGS",
    "PROXY_ACCESS_LOG",
)
# The asyncio peers' processes (each forwards through its own client session).
ASYNCIO_PROCESSES = 2


@dataclass(frozen=True)
class Peer:
    name: str
    label: str
    kind: str  # direct, haproxy, nginx, proxypy, mitmdump, aiohttp, uvicorn, granian, lbproxy
    # lbproxy: PROXY_WORKERS (None: its default, one per CPU); the asyncio peers: processes
    workers: int | None = None
    features: bool = False  # lbproxy: metrics + access log on
    domains: int = 3  # lbproxy: services in proxy.yaml
    python: bool = False  # needs bench/.venv-peers
    tls: bool = False  # terminates TLS (the tls section): the listener is https
    ws: bool = False  # the websocket section: in front of the WebSocket echo upstream
    limit: str | None = None  # the ratelimit section: a rate_limit of this scope, never reached
    prometheus: bool = True  # proxy.prometheus (the prometheus section turns it off)


PEERS = {
    peer.name: peer
    for peer in (
        Peer("direct", "direct to upstream", "direct"),
        Peer("haproxy", "HAProxy (nbthread 2)", "haproxy"),
        Peer("nginx", "nginx (2 workers)", "nginx"),
        Peer("proxypy", "proxy.py (--threaded, 2 acceptors)", "proxypy", python=True),
        Peer("mitmdump", "mitmdump (reverse)", "mitmdump", python=True),
        Peer(
            "aiohttp",
            "aiohttp server + client, uvloop (2 processes)",
            "aiohttp",
            ASYNCIO_PROCESSES,
            python=True,
        ),
        Peer(
            "uvicorn",
            "uvicorn (uvloop, httptools) + ASGI + aiohttp client (2 workers)",
            "uvicorn",
            ASYNCIO_PROCESSES,
            python=True,
        ),
        Peer(
            "granian",
            "granian (ASGI) + aiohttp client (2 workers)",
            "granian",
            ASYNCIO_PROCESSES,
            python=True,
        ),
        Peer("lbproxy", f"lbproxy default ({os.cpu_count()} workers), on", "lbproxy", None, True),
        Peer("lbproxy-1w", "lbproxy 1 worker, on", "lbproxy", 1, True),
        Peer("lbproxy-2w", "lbproxy 2 workers, on", "lbproxy", 2, True),
        Peer("lbproxy-1w-off", "lbproxy 1 worker, off", "lbproxy", 1, False),
        Peer("lbproxy-2w-off", "lbproxy 2 workers, off", "lbproxy", 2, False),
        Peer("lbproxy-2w-10k", "lbproxy 2 workers, on, 10,000 domains", "lbproxy", 2, True, 10_000),
        Peer(
            "lbproxy-2w-limit-local",
            "lbproxy 2 workers, on, local rate limit",
            "lbproxy",
            2,
            True,
            limit="local",
        ),
        Peer(
            "lbproxy-2w-limit-global",
            "lbproxy 2 workers, on, global rate limit (Redis)",
            "lbproxy",
            2,
            True,
            limit="global",
        ),
        Peer(
            "lbproxy-2w-noprom",
            "lbproxy 2 workers, on, without /metrics",
            "lbproxy",
            2,
            True,
            prometheus=False,
        ),
        Peer("haproxy-tls", "HAProxy (nbthread 2), TLS", "haproxy", tls=True),
        Peer("lbproxy-2w-tls", "lbproxy 2 workers, on, TLS", "lbproxy", 2, True, tls=True),
        Peer("ws-direct", "direct to the WebSocket echo", "direct", ws=True),
        Peer("ws-nginx", "nginx (2 workers), WebSocket", "nginx", ws=True),
        Peer("ws-lbproxy-2w", "lbproxy 2 workers, on, WebSocket", "lbproxy", 2, True, 1, ws=True),
    )
}


@dataclass
class Launch:
    """What to start for a peer, and what to tell about it."""

    args: list[str]
    env: dict[str, str]
    stop_signal: int = signal.SIGTERM
    cwd: Path | None = None
    notes: dict = field(default_factory=dict)

    def command(self) -> str:
        shown = {k: v for k, v in self.env.items() if os.environ.get(k) != v}
        prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(shown.items()))
        return (prefix + " " if prefix else "") + shlex.join(self.args)


def write_bodies(www: Path) -> None:
    www.mkdir(parents=True, exist_ok=True)
    for path, size in BODIES.items():
        (www / path.lstrip("/")).write_bytes(b"x" * size)
    probe = www / PROBE_PATH.lstrip("/")
    probe.parent.mkdir(exist_ok=True)
    probe.parent.chmod(0o755)
    probe.write_bytes(PROBE_BODY)


def _nginx_common(home: Path) -> str:
    temp = "\n".join(
        f"    {kind}_temp_path {home}/{kind}_temp;"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""daemon off;
master_process on;
pid {home}/nginx.pid;
error_log {home}/error.log warn;
worker_rlimit_nofile 16384;
events {{ worker_connections 8192; }}
http {{
    access_log off;
{temp}
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 75s;
    keepalive_requests 1000000;
"""


def nginx_args(home: Path, conf: Path) -> list[str]:
    return ["/usr/sbin/nginx", "-p", f"{home}/", "-e", f"{home}/error.log", "-c", str(conf)]


def upstream(home: Path, port: int) -> Launch:
    home.mkdir(parents=True, exist_ok=True)
    www = home / "www"
    write_bodies(www)
    for path in (home, www):
        path.chmod(0o755)  # nginx workers run as www-data when started as root
    conf = home / "nginx.conf"
    conf.write_text(
        "worker_processes 1;\n"
        + _nginx_common(home)
        + f"""    open_file_cache max=16;
    open_file_cache_valid 1h;
    server {{
        listen 127.0.0.1:{port} default_server backlog=4096;
        root {www};
        location {PROBE_PATH.rsplit("/", 1)[0]}/ {{
            default_type {PROBE_TYPE};
            add_header X-Bench-Echo $http_x_bench_probe;
            add_header X-Bench-Args $args;
        }}
    }}
}}
"""
    )
    notes = {"config": conf.read_text()}
    return Launch(nginx_args(home, conf), dict(os.environ), signal.SIGTERM, notes=notes)


def haproxy_config(port: int, upstream_port: int, pem: Path | None = None) -> str:
    """HAProxy's config; with pem (certificate and key in one file), TLS on the bind
    with ALPN h2 and http/1.1, as `bind ... ssl crt ... alpn` is written by users."""
    bind = f"127.0.0.1:{port}"
    if pem is not None:
        bind += f" ssl crt {pem} alpn {','.join(tls.ALPN)}"
    return f"""global
    nbthread 2
    maxconn 4096
defaults
    mode http
    option http-keep-alive
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    timeout http-keep-alive 15s
frontend bench
    bind {bind}
    default_backend upstream
backend upstream
    server nginx 127.0.0.1:{upstream_port}
"""


def nginx_ws_config(home: Path, port: int, echo_port: int) -> str:
    """nginx in front of the WebSocket echo upstream, as its docs write the proxying."""
    return (
        "worker_processes 2;\n"
        + _nginx_common(home)
        + f"""    server {{
        listen 127.0.0.1:{port} default_server backlog=4096;
        location / {{
            proxy_pass http://127.0.0.1:{echo_port};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_set_header Host $host;
            proxy_read_timeout 300s;
        }}
    }}
}}
"""
    )


def ws_echo(port: int) -> Launch:
    """The websocket section's upstream: tests/ws_upstream.py, echoing every message."""
    args = [sys.executable, "-m", "tests.ws_upstream", "--port", str(port)]
    return Launch(args, dict(os.environ), signal.SIGTERM, cwd=REPO)


def launch(peer: Peer, home: Path, port: int, upstream_port: int, extra: dict) -> Launch:
    """The start command of a proxy peer listening on port, forwarding to upstream_port
    (for a ws peer: the WebSocket echo upstream's port).

    extra: admin_port, statsd_port, on_env, off_env (lbproxy); tls (a tls.Files,
    for a peer with tls).
    """
    home.mkdir(parents=True, exist_ok=True)
    home.chmod(0o755)
    env = dict(os.environ)
    target = f"http://127.0.0.1:{upstream_port}"
    files = extra["tls"] if peer.tls else None
    if peer.kind == "haproxy":
        conf = home / "haproxy.cfg"
        conf.write_text(haproxy_config(port, upstream_port, files.pem if files else None))
        args = ["/usr/sbin/haproxy", "-db", "-f", str(conf)]
        return Launch(args, env, signal.SIGTERM, notes={"config": conf.read_text()})
    if peer.kind == "nginx" and peer.ws:
        conf = home / "nginx.conf"
        conf.write_text(nginx_ws_config(home, port, upstream_port))
        return Launch(
            nginx_args(home, conf), env, signal.SIGTERM, notes={"config": conf.read_text()}
        )
    if peer.kind == "nginx":
        conf = home / "nginx.conf"
        conf.write_text(
            "worker_processes 2;\n"
            + _nginx_common(home)
            + f"""    upstream bench {{
        server 127.0.0.1:{upstream_port};
        keepalive 128;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port} default_server backlog=4096;
        location / {{
            proxy_pass http://bench;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_max_temp_file_size 0;
        }}
    }}
}}
"""
        )
        return Launch(
            nginx_args(home, conf), env, signal.SIGTERM, notes={"config": conf.read_text()}
        )
    if peer.kind in ("proxypy", "mitmdump"):
        env["HOME"] = str(home)  # they write their dirs (~/.proxy, ~/.mitmproxy) under $HOME
    if peer.kind == "proxypy":
        env["PYTHONPATH"] = str(PLUGINS)
        env["BENCH_UPSTREAM"] = target
        args = [
            str(PEERS_VENV / "bin" / "proxy"),
            "--hostname", "127.0.0.1",
            "--port", str(port),
            "--threaded",
            "--num-acceptors", "2",
            "--enable-reverse-proxy",
            "--plugins", "bench_proxypy.BenchReverseProxy",
            "--log-level", "WARNING",
        ]  # fmt: skip
        return Launch(args, env, signal.SIGINT)
    if peer.kind == "mitmdump":
        args = [
            str(PEERS_VENV / "bin" / "mitmdump"),
            "--mode", f"reverse:{target}",
            "--listen-host", "127.0.0.1",
            "--listen-port", str(port),
            "--set", f"confdir={home}/mitmproxy",
            "-q",
        ]  # fmt: skip
        return Launch(args, env, signal.SIGINT)
    if peer.kind in ASYNCIO_KINDS:
        return asyncio_peer(peer, port, target, env)
    if peer.kind == "lbproxy":
        return lbproxy(peer, home, port, upstream_port, env, extra)
    raise ValueError(f"unknown peer kind {peer.kind}")


ASYNCIO_KINDS = ("aiohttp", "uvicorn", "granian")


def asyncio_peer(peer: Peer, port: int, target: str, env: dict) -> Launch:
    """The asyncio peers: bench/plugins/ run from bench/.venv-peers, no access log.

    aiohttp: its own supervisor, one SO_REUSEPORT listener per process (see
    bench_aiohttp.py for why). uvicorn and granian: their own multi-process
    mode, in which the master binds one socket that every worker accepts on.
    uvicorn adds no Server or Date header of its own: the upstream's pass through.
    """
    env["PYTHONPATH"] = str(PLUGINS)
    env["BENCH_UPSTREAM"] = target
    workers = str(peer.workers or ASYNCIO_PROCESSES)
    bin_dir = PEERS_VENV / "bin"
    address = ["--host", "127.0.0.1", "--port", str(port)]
    if peer.kind == "aiohttp":
        script = str(PLUGINS / "bench_aiohttp.py")
        args = [str(bin_dir / "python"), script, *address, "--processes", workers]
    elif peer.kind == "uvicorn":
        args = [
            str(bin_dir / "uvicorn"), *address,
            "--workers", workers,
            "--loop", "uvloop",
            "--http", "httptools",
            "--backlog", "4096",
            "--no-access-log", "--no-server-header", "--no-date-header",
            "--log-level", "warning",
            "bench_asgi:app",
        ]  # fmt: skip
    else:
        args = [
            str(bin_dir / "granian"), *address,
            "--interface", "asgi",
            "--workers", workers,
            "--loop", "uvloop",
            "--http", "1",
            "--backlog", "4096",
            "--no-access-log",
            "--log-level", "warning",
            "bench_asgi:app",
        ]  # fmt: skip
    return Launch(args, env, signal.SIGTERM, cwd=PLUGINS)


# A limit the load never reaches: what is measured is the check, not refusals.
BENCH_LIMIT = {"rate": 1_000_000, "burst": 1_000_000, "key": "client_ip"}


def lbproxy_config(
    port: int,
    admin_port: int,
    upstream_port: int,
    domains: int,
    files: tls.Files | None = None,
    limit: str | None = None,
    redis_port: int | None = None,
) -> dict:
    """proxy.yaml; with files, the one listener is TLS (certificate, ALPN h2 and http/1.1);
    with limit, the bench service has a rate_limit of that scope (global: Redis on redis_port)."""
    host = {"address": "127.0.0.1", "port": upstream_port}
    services = [{"name": "bench", "domain": BENCH_DOMAIN, "hosts": [host]}]
    if limit is not None:
        services[0]["rate_limit"] = {**BENCH_LIMIT, "scope": limit}
    services += [
        {"name": f"svc{i:05d}", "domain": f"svc{i:05d}.{BENCH_DOMAIN}", "hosts": [host]}
        for i in range(1, domains)
    ]
    listen: dict | list = {"address": "127.0.0.1", "port": port}
    if files is not None:
        certificate = {"cert": str(files.cert), "key": str(files.key)}
        listen = [{**listen, "tls": {"certificates": [certificate], "alpn": list(tls.ALPN)}}]
    document = {
        "proxy": {
            "listen": listen,
            "admin": {"address": "127.0.0.1", "port": admin_port},
            "services": services,
        }
    }
    if limit == "global":
        document["proxy"]["redis"] = {"url": f"redis://127.0.0.1:{redis_port}/0", "timeout": 0.05}
    return document


def lbproxy(peer: Peer, home: Path, port: int, upstream_port: int, env: dict, extra: dict):
    config = home / "proxy.yaml"
    files = extra["tls"] if peer.tls else None
    document = lbproxy_config(
        port,
        extra["admin_port"],
        upstream_port,
        peer.domains,
        files,
        peer.limit,
        extra.get("redis_port"),
    )
    if not peer.prometheus:
        document["proxy"]["prometheus"] = False
    config.write_text(yaml.safe_dump(document, sort_keys=False))
    for key in FEATURE_ENV:
        env.pop(key, None)
    env["PROXY_CONFIG"] = str(config)
    env.update(image_python_env())  # its bytecode compiled by harness.lbproxy_bytecode
    if peer.workers is None:
        env.pop("PROXY_WORKERS", None)
    else:
        env["PROXY_WORKERS"] = str(peer.workers)
    notes = {"domains": peer.domains, "variant": "on" if peer.features else "off"}
    if peer.domains <= 3:
        notes["config"] = config.read_text()
    if peer.features:
        # On as deployed: the access log to a file, metrics to StatsD (bench/sink.py).
        access_log = home / "access.log"
        variant = {
            "STATSD_HOST": "127.0.0.1",
            "STATSD_PORT": str(extra["statsd_port"]),
            "GUNICORN_CMD_ARGS": f"--access-logfile {access_log}",
        }
        variant.update(extra.get("on_env", {}))
        notes["access_log"] = str(access_log)
    else:
        # Off: no access log at all (its default is stdout), no StatsD host
        # (proxy.yaml names none and the STATSD_* variables are cleared above).
        variant = {"PROXY_ACCESS_LOG": "off", **extra.get("off_env", {})}
    env.update(variant)
    notes["variant_env"] = variant
    args = [str(LBPROXY_GUNICORN), "-c", "gunicorn.conf.py"]
    # SIGINT: gunicorn's quick shutdown (the load has ended; nothing is in flight).
    return Launch(args, env, signal.SIGINT, cwd=REPO, notes=notes)


def redis_args(port: int) -> list[str]:
    """The Redis the global rate-limit peer shares its buckets through (in memory only)."""
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"  # may be absent
    return [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]


def sink_args(port: int, report: Path) -> list[str]:
    return [sys.executable, "-m", "bench.sink", str(port), str(report)]
