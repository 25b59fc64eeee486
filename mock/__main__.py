"""Start one mock instance: ``python -m mock --port 9001 [options]`` (see --help).

It runs on gunicorn with a gevent worker, configured here in full: it never
reads ./gunicorn.conf.py (that file is the proxy's).
"""

from __future__ import annotations

import argparse

from gunicorn.app.base import BaseApplication

from mock.echo import EchoApp


class MockServer(BaseApplication):
    def __init__(self, app: EchoApp, options: dict):
        self.app = app
        self.options = options
        super().__init__()

    def load_config(self):
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self):
        return self.app


# Not __doc__: the images run with PYTHONOPTIMIZE=2, which drops docstrings.
DESCRIPTION = "Start one mock instance."


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mock", description=DESCRIPTION)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--address", default="127.0.0.1")
    parser.add_argument("--name", help="identity shown in answers (default: mock-PORT)")
    parser.add_argument("--keepalive", type=int, default=2, help="idle keep-alive seconds")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument(
        "--status", type=int, default=200, help="status of every answer (a sick instance: 503)"
    )
    parser.add_argument("--certfile", help="serve https with this PEM certificate chain")
    parser.add_argument("--keyfile", help="... and this key")
    args = parser.parse_args(argv)

    name = args.name or f"mock-{args.port}"
    options = {
        "bind": f"{args.address}:{args.port}",
        # The proxy's gunicorn-server worker: batch accepts under load.
        "worker_class": "app.process.worker.GunicornServerWorker",
        "workers": args.workers,
        "worker_connections": 2000,
        "keepalive": args.keepalive,
        "proc_name": f"lbproxy-mock-{name}",
        "loglevel": "warning",
        "control_socket_disable": True,
    }
    if args.certfile:
        options.update(certfile=args.certfile, keyfile=args.keyfile)
    MockServer(EchoApp(name, args.port, args.status), options).run()


if __name__ == "__main__":
    main()
