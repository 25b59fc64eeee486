"""Command line: ``python -m app check [proxy.yaml]`` validates a config file.

Exit status 0 when the file is valid, 1 with the problem on stderr when not;
nothing is started either way. ``python -m app config-reference`` rewrites
docs/configuration.md from the schema.
"""

from __future__ import annotations

import argparse
import sys

from app.config import ConfigError, config_path, load_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="validate a proxy.yaml without starting anything")
    check.add_argument("path", nargs="?", help="default: $PROXY_CONFIG, else proxy.yaml")
    commands.add_parser("config-reference", help="rewrite docs/configuration.md from the schema")
    args = parser.parse_args(argv)
    if args.command == "config-reference":
        from app import config_reference

        print(f"wrote {config_reference.write()}")
        return 0

    path = args.path or config_path()
    try:
        config = load_config(path)
    except ConfigError as error:
        print(f"{path}: {error}", file=sys.stderr)
        return 1
    hosts = sum(len(service.hosts) for service in config.services)
    names = sum(len(service.discover) for service in config.services)
    resolved = f", {names} names to resolve" if names else ""
    print(f"{path}: ok ({len(config.services)} services, {hosts} hosts{resolved})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
