"""The ``lbproxy`` command: ``check`` (every problem at once), ``--version``, and
the package as a user installs it: ``pip install .`` into a fresh venv, then
``lbproxy run`` from another directory, titled in ``ps``, reloading on SIGHUP."""

from __future__ import annotations

import signal
import subprocess
import sys
import venv
from pathlib import Path

import pytest
import requests
import yaml

from app import __version__
from app.__main__ import main
from app.config import REPO_ROOT
from devkit.lbproxy import config_ports
from devkit.processes import Server, children, wait_until
from tests.processes import start_mock, write_config
from tests.unit.test_config import EIGHT_PROBLEMS


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


def test_check_reports_every_problem_in_one_run_each_with_its_path(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(EIGHT_PROBLEMS)
    assert main(["check", str(bad)]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 8
    assert all(line.startswith(f"{bad}: proxy.") for line in lines)
    assert f"{bad}: proxy.services[1].domian: unknown key (did you mean 'domain'?)" in lines[4]


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


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out == f"lbproxy {__version__}\n"


# --- installed with pip ---------------------------------------------------------


def source_tree(destination: Path) -> Path:
    """The clone's files as git sees them (tracked and new, not ignored): what a
    user's ``pip install .`` reads, without writing its build/ into the repo."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT, capture_output=True, text=True, check=True,
    ).stdout.split("\n")  # fmt: skip
    for name in filter(None, listed):
        source = REPO_ROOT / name
        if source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read_bytes())
    return destination


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv with ``pip install .`` done in a copy of the clone: its bin/."""
    home = tmp_path_factory.mktemp("installed")
    source = source_tree(home / "src")
    venv.create(home / "venv", with_pip=True)
    bin_dir = home / "venv" / "bin"
    result = subprocess.run(
        [str(bin_dir / "pip"), "install", "--quiet", "--disable-pip-version-check", "."],
        cwd=source, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return bin_dir


def test_pip_install_gives_the_lbproxy_command(installed, tmp_path):
    version = subprocess.run(
        [str(installed / "lbproxy"), "--version"], cwd=tmp_path, capture_output=True, text=True
    )
    assert version.stdout == f"lbproxy {__version__}\n", version.stderr
    check = subprocess.run(
        [str(installed / "lbproxy"), "check", str(REPO_ROOT / "proxy.yaml")],
        cwd=tmp_path, capture_output=True, text=True,
    )  # fmt: skip
    assert check.returncode == 0 and "ok (3 services, 6 hosts)" in check.stdout, check.stderr
    # Only the packages install: none of the repo's tooling.
    imports = subprocess.run(
        [str(installed / "python"), "-c", "import app.cli, mock.echo; import devkit"],
        cwd=tmp_path, capture_output=True, text=True,
    )  # fmt: skip
    assert "No module named 'devkit'" in imports.stderr


def cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()


def test_lbproxy_run_serves_from_any_directory_titled_and_reloads(installed, tmp_path):
    mock = start_mock("installed")
    services = [{"name": "a", "domain": "a.test",
                 "hosts": [{"address": "127.0.0.1", "port": mock.port}]}]  # fmt: skip
    config = write_config(tmp_path, services)
    document = config.read_text()
    ports = config_ports(config, load=yaml.safe_load)
    args = [str(installed / "lbproxy"), "run", "--config", config.name, "--workers", "2"]
    proxy = Server("lbproxy-run", args, ports[0], cwd=tmp_path, more_ports=[ports[1]])
    try:
        url = f"http://127.0.0.1:{ports[0]}/"
        answer = requests.get(url, headers={"Host": "a.test"}, timeout=5)
        assert answer.status_code == 200 and answer.json()["instance"] == "installed"

        assert wait_until(lambda: len(children(proxy.pid)) == 2, proxy, 10, "2 workers")
        assert wait_until(lambda: cmdline(proxy.pid) == "lbproxy: master", proxy, 10, "title")
        assert {cmdline(pid) for pid in children(proxy.pid)} == {"lbproxy: worker"}

        config.write_text(document.replace("domain: a.test", "domain: b.test"))
        proxy.signal(signal.SIGHUP)  # the settings file is run again: proxy.yaml re-read

        def moved() -> bool:
            return requests.get(url, headers={"Host": "b.test"}, timeout=5).status_code == 200

        assert wait_until(moved, proxy, 15, "the reloaded config")
        assert cmdline(proxy.pid) == "lbproxy: master"  # retitled after gunicorn's reload
    finally:
        proxy.stop()
        mock.stop()


@pytest.mark.parametrize("option", [["--bind", "127.0.0.1:1"], ["-b", "127.0.0.1:1"], ["--bind=x"]])
def test_run_refuses_bind_which_would_replace_the_configs_listeners(option, capsys):
    with pytest.raises(SystemExit) as done:
        main(["run", *option])
    assert done.value.code == 2
    assert "proxy.listen and proxy.admin" in capsys.readouterr().err


def test_config_reference_only_rewrites_a_checkouts_docs(installed, tmp_path):
    answer = subprocess.run(
        [str(installed / "lbproxy"), "config-reference"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert answer.returncode == 2 and "installed copy" in answer.stderr
