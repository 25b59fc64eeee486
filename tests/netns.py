"""A network namespace of its own for a test: processes that bind fixed ports or
0.0.0.0 (the images, the demo) run in it and touch nothing of the machine's."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest


class Namespace:
    """A network namespace of its own (its loopback up), held by a sleeping process."""

    def __init__(self):
        try:
            self.holder = subprocess.Popen(["unshare", "--net", "sleep", "600"])
            time.sleep(0.2)
            self.enter(["ip", "link", "set", "lo", "up"], check=True)
        except (OSError, subprocess.CalledProcessError) as error:
            pytest.fail(f"a network namespace is needed (unshare --net, as root): {error}")

    def prefix(self) -> list[str]:
        return ["nsenter", f"--net=/proc/{self.holder.pid}/ns/net", "--"]

    def enter(self, command: list[str], **options) -> subprocess.CompletedProcess:
        options.setdefault("timeout", 30)
        return subprocess.run([*self.prefix(), *command], capture_output=True, text=True, **options)

    def listening(self, port: int) -> bool:
        """A LISTEN socket on ``port`` in this namespace (its own /proc/net/tcp)."""
        table = Path(f"/proc/{self.holder.pid}/net/tcp").read_text().splitlines()[1:]
        return any(
            int(line.split()[1].split(":")[1], 16) == port and line.split()[3] == "0A"
            for line in table
        )

    def close(self) -> None:
        self.holder.kill()
        self.holder.wait()


def fetch(namespace: Namespace, url: str, host: str) -> tuple[int, str]:
    """(status, body) of a GET from inside the namespace."""
    code = (
        "import json, sys, urllib.request\n"
        f"request = urllib.request.Request({url!r}, headers={{'Host': {host!r}}})\n"
        "with urllib.request.urlopen(request, timeout=5) as answer:\n"
        "    print(json.dumps([answer.status, answer.read().decode()]))\n"
    )
    result = namespace.enter([sys.executable, "-c", code])
    assert result.returncode == 0, result.stderr
    status, body = json.loads(result.stdout)
    return status, body
