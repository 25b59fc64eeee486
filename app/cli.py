"""The ``lbproxy`` command (also ``python -m app``).

    lbproxy run [--config FILE] [GUNICORN OPTION ...]   serve, from any directory
    lbproxy check [FILE]                                validate, every problem at once
    lbproxy config-reference                            rewrite docs/configuration.md
    lbproxy --version

``run`` is gunicorn with lbproxy's settings (app/process/gunicorn_conf.py), in
this process: options after it go to gunicorn as they are (``--workers``,
``--access-logfile``, ...), except ``--bind``: gunicorn's command line would
replace every listener of proxy.yaml, the admin one included, so it is refused
(listeners are ``proxy.listen`` and ``proxy.admin``). gunicorn's binary upgrade
(USR2) is not supported: it re-executes gunicorn's own command line; upgrade by
a rolling restart. ``check`` starts nothing: exit status 0 when the file is
valid, 1 with each problem on a line of its own on stderr.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from app import __version__
from app.config import ConfigError, config_path, load_config, problems

GUNICORN_SETTINGS = Path(__file__).resolve().parent / "process" / "gunicorn_conf.py"


def main(argv: list[str] | None = None, prog: str = "lbproxy") -> int:
    parser = argparse.ArgumentParser(prog=prog, description="A Host-routing HTTP load balancer.")
    parser.add_argument("--version", action="version", version=f"lbproxy {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="serve with gunicorn and lbproxy's settings")
    run.add_argument("--config", help="proxy.yaml to serve (sets PROXY_CONFIG)")
    check = commands.add_parser("check", help="validate a proxy.yaml without starting anything")
    check.add_argument("path", nargs="?", help="default: $PROXY_CONFIG, else proxy.yaml")
    commands.add_parser("config-reference", help="rewrite docs/configuration.md from the schema")
    args, rest = parser.parse_known_args(argv)
    if rest and args.command != "run":
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if any(option in ("-b", "--bind") or option.startswith("--bind=") for option in rest):
        parser.error("--bind: the listeners are proxy.yaml's proxy.listen and proxy.admin")
    if args.command == "run":
        return serve(args.config, rest)
    if args.command == "config-reference":
        from app import config_reference

        if not config_reference.OUTPUT.parent.is_dir():
            parser.error("config-reference rewrites docs/ of a checkout; this is an installed copy")
        if sys.flags.optimize >= 2:  # the schema's blocks are described by their docstrings
            parser.error("config-reference needs docstrings: run it without PYTHONOPTIMIZE=2")
        print(f"wrote {config_reference.write()}")
        return 0
    return check_file(args.path)


def check_file(path: str | None) -> int:
    path = path or str(config_path())
    try:
        config = load_config(path)
    except ConfigError as error:
        for problem in problems(error):
            print(f"{path}: {problem}", file=sys.stderr)
        return 1
    hosts = sum(len(service.hosts) for service in config.services)
    names = sum(len(service.discover) for service in config.services)
    resolved = f", {names} names to resolve" if names else ""
    print(f"{path}: ok ({len(config.services)} services, {hosts} hosts{resolved})")
    return 0


def serve(config: str | None, options: list[str]) -> int:
    """gunicorn's own command line, in this process, with lbproxy's settings file."""
    from gunicorn.app.wsgiapp import WSGIApplication

    if config is not None:
        # Absolute: gunicorn re-reads it on SIGHUP, whatever the directory is by then.
        os.environ["PROXY_CONFIG"] = str(Path(config).resolve())
    sys.argv = ["lbproxy run", "-c", str(GUNICORN_SETTINGS), *options]
    WSGIApplication("%(prog)s [OPTIONS]").run()
    return 0


def entry() -> None:
    """The console script pyproject.toml installs."""
    sys.exit(main())
