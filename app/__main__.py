"""``python -m app ...`` is the ``lbproxy`` command (app/cli.py) before it is installed."""

import sys

from app.cli import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m app"))
