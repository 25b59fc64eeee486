"""docs/configuration.md is generated from app/config.py and must not go stale."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

from app import config, config_reference
from app.__main__ import main


def test_the_committed_reference_is_what_the_schema_renders():
    committed = config_reference.OUTPUT.read_text(encoding="utf-8")
    assert committed == config_reference.render(), (
        "docs/configuration.md is stale: run `.venv/bin/python -m app config-reference`"
    )


def test_every_key_of_every_block_is_documented_in_a_section():
    blocks = {block for _, block in config_reference.SECTIONS}
    for block in blocks:
        for spec in dataclasses.fields(block):
            if "check" not in spec.metadata:
                continue  # not a key: derived when loaded (Certificate.names)
            assert spec.metadata.get("doc"), f"{block.__name__}.{spec.name} has no doc"
            if dataclasses.is_dataclass(spec.metadata["check"]):
                assert spec.metadata["check"] in blocks
    # Every block the loader reads has a section.
    top = {config.Listen, config.Admin, config.Limits, config.Statsd, config.Service, config.Host}
    top |= {config.Resolver, config.Affinity}
    assert top <= blocks


def test_a_row_shows_default_required_and_nested_blocks():
    text = config_reference.render()
    assert "| `read` | `30` | seconds to wait for each read" in text
    assert "| `name` | required |" in text and "| `domain` | required |" in text
    assert "| `address` | none | IPv4/IPv6 literal or DNS name" in text  # required unless srv
    assert (
        "| `health_check` | off | active health checks: see [`health_check`](#health_check)" in text
    )
    assert "| `on_status` | `[]` |" in text and "| `count_5xx` | `false` |" in text


def test_the_cli_rewrites_the_file(tmp_path, monkeypatch, capsys):
    target = tmp_path / "configuration.md"
    monkeypatch.setattr(config_reference, "OUTPUT", target)
    monkeypatch.setattr(config_reference.write, "__defaults__", (target,))
    assert main(["config-reference"]) == 0
    assert target.read_text() == config_reference.render()
    assert str(target) in capsys.readouterr().out


def test_the_cli_refuses_without_docstrings():
    """Under -OO (as the images run) the blocks' docstrings are gone: no rewrite
    with empty meanings."""
    done = subprocess.run([sys.executable, "-OO", "-m", "app", "config-reference"],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 2
    assert "needs docstrings" in done.stderr
