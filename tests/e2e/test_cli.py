"""``python -m app check``: validate a file without starting anything."""

from __future__ import annotations

import subprocess
import sys

from app.__main__ import main
from app.config import REPO_ROOT


def test_a_valid_file_exits_0(capsys):
    assert main(["check", str(REPO_ROOT / "proxy.yaml")]) == 0
    assert "ok (3 services, 6 hosts)" in capsys.readouterr().out


def test_an_invalid_file_exits_1_naming_the_field(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "proxy:\n  services:\n    - {name: a, domain: a.test, hosts: [{address: h, port: abc}]}\n"
    )
    assert main(["check", str(bad)]) == 1
    assert "proxy.services[0].hosts[0].port: expected an integer 1-65535, got 'abc'" in (
        capsys.readouterr().err
    )


def test_the_module_runs_as_a_command(tmp_path):
    ok = subprocess.run(
        [sys.executable, "-m", "app", "check"], cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert ok.returncode == 0, ok.stderr
    missing = subprocess.run(
        [sys.executable, "-m", "app", "check", str(tmp_path / "none.yaml")],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 1 and "cannot read it" in missing.stderr
