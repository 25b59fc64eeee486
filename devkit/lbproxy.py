"""lbproxy's own processes, for the tools and the tests: a mock upstream, the proxy
under real gunicorn, and a proxy config on free ports. Standard library only."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

from devkit.processes import LOOPBACK, Server, free_port

REPO = Path(__file__).resolve().parent.parent


def start_mock(
    name: str,
    port: int | None = None,
    *,
    keepalive: int = 2,
    status: int = 200,
    label: str | None = None,
    tls: tuple[Path, Path] | None = None,
    python: Path | str = sys.executable,
    log: Path | None = None,
    timeout: float = 15.0,
    address: str = LOOPBACK,
) -> Server:
    """``python -m mock`` answering as ``name`` on ``address``, once its port is open.

    label: the process's name in messages (default mock-NAME).
    tls: (certificate, key): serve https.
    """
    port = port or free_port(address)
    args = [str(python), "-m", "mock", "--port", str(port), "--name", name, "--address", address]
    args += ["--keepalive", str(keepalive), "--status", str(status)]
    if tls is not None:
        args += ["--certfile", str(tls[0]), "--keyfile", str(tls[1])]
    return Server(
        label or f"mock-{name}", args, port, cwd=REPO, log=log, timeout=timeout, address=address
    )


def json_text(document: dict) -> str:
    return json.dumps(document, indent=2) + "\n"


def write_config(
    directory: Path,
    services: list[dict],
    *,
    dump: Callable[[dict], str] = json_text,
    **proxy: object,
) -> Path:
    """A proxy config on free ports; returns its path (ports readable back from it).

    dump: the document as text. JSON by default, which is YAML too (the proxy
    reads it as any proxy.yaml): this library has no YAML writer. A float JSON
    writes without a dot (1e-05) would be a string to PyYAML.
    """
    document = {
        "proxy": {
            "listen": {"address": LOOPBACK, "port": free_port()},
            "admin": {"address": LOOPBACK, "port": free_port()},
            **proxy,
            "services": services,
        }
    }
    path = directory / f"proxy-{document['proxy']['listen']['port']}.yaml"
    path.write_text(dump(document))
    return path


def config_ports(config: Path, load: Callable[[str], dict] = json.loads) -> tuple[int, int]:
    """(listen, admin) ports of a config write_config wrote (load: dump's inverse)."""
    document = load(config.read_text())["proxy"]
    return document["listen"]["port"], document["admin"]["port"]


class Proxy(Server):
    """lbproxy under real gunicorn, started the documented way: gunicorn -c gunicorn.conf.py
    from the repo root, once its listen and admin ports are open.

    ports: (listen, admin); default read from a config write_config wrote as JSON.
    gunicorn: default the one next to this python.
    """

    def __init__(
        self,
        config: Path,
        workers: int = 2,
        env: dict[str, str] | None = None,
        *,
        ports: tuple[int, int] | None = None,
        gunicorn: Path | None = None,
        log: Path | None = None,
        timeout: float = 15.0,
    ):
        self.config = config
        port, self.admin_port = ports or config_ports(config)
        gunicorn = gunicorn or Path(sys.executable).parent / "gunicorn"
        env = {
            **os.environ,
            "PROXY_CONFIG": str(config),
            "PROXY_WORKERS": str(workers),
            **(env or {}),
        }
        super().__init__(
            "proxy",
            [str(gunicorn), "-c", "gunicorn.conf.py"],
            port,
            env=env,
            cwd=REPO,
            log=log,
            more_ports=(self.admin_port,),
            timeout=timeout,
        )

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"
