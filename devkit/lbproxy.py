"""lbproxy's own processes, for the tools and the tests: a mock upstream, the proxy
under real gunicorn, and a proxy config on free ports. Standard library only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from devkit.processes import LOOPBACK, Server, free_port

REPO = Path(__file__).resolve().parent.parent

# lbproxy as its image runs it (Dockerfile): PYTHONOPTIMIZE=2, from bytecode
# compiled beforehand. The bytecode goes to a pycache prefix of our own, the
# standard library's too: with a prefix set Python reads no __pycache__ beside
# the sources, and a distribution's Python has level-0 bytecode only there. A
# module without it would be compiled in every process, and skew the memory.
IMAGE_OPTIMIZE = 2
IMAGE_PYCACHE = REPO / ".venv" / "pycache-opt2"
_COMPILE = """\
import compileall, re, sys, sysconfig
paths, level, workers = sysconfig.get_paths(), int(sys.argv[1]), int(sys.argv[2])
stdlib = paths["stdlib"]
skips = re.compile(re.escape(stdlib) + r"/(site-packages|(.+/)?(test|tests|idle_test))/")
done = [compileall.compile_dir(stdlib, quiet=1, optimize=level, workers=workers, rx=skips)]
for path in dict.fromkeys((paths["purelib"], paths["platlib"], "app", "mock")):
    done.append(compileall.compile_dir(path, quiet=1, optimize=level, workers=workers))
sys.exit(0 if all(done) else 1)
"""


def image_python_env() -> dict[str, str]:
    """The environment that runs lbproxy as its image does (compile_image_bytecode first)."""
    return {"PYTHONOPTIMIZE": str(IMAGE_OPTIMIZE), "PYTHONPYCACHEPREFIX": str(IMAGE_PYCACHE)}


def compile_image_bytecode(python: Path) -> str:
    """Fill IMAGE_PYCACHE for ``python`` (a venv's): its standard library, its
    packages, app and mock. A later call recompiles only what changed.

    Returns what failed, "" when everything compiled."""
    # In parallel the first time; a pool costs more than it saves once all is compiled.
    workers = "1" if IMAGE_PYCACHE.is_dir() else "0"
    env = {**os.environ, "PYTHONPYCACHEPREFIX": str(IMAGE_PYCACHE)}
    try:
        done = subprocess.run([str(python), "-c", _COMPILE, str(IMAGE_OPTIMIZE), workers],
                              cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=600)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"{python}: {error}"
    if done.returncode == 0:
        return ""
    return (done.stdout + done.stderr).strip()[-2000:] or f"exit status {done.returncode}"


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
