"""The master: the config read in a child (PyYAML never resident), the imports it
does once for every worker, and the garbage collector frozen before each fork."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import weakref

import pytest

from app.config import ConfigError, read_yaml
from app.process import master

DOCUMENT = "proxy:\n  services: [{name: a, when: 2026-12-07, hosts: [1, 2.5, null, true]}]\n"


def test_the_master_reads_yaml_in_a_child_as_it_would_itself():
    assert master.read_yaml_apart(DOCUMENT) == read_yaml(DOCUMENT)


def test_yaml_that_is_not_valid_is_the_same_problem_from_the_child():
    bad = "proxy:\n  services: [oops\n"
    with pytest.raises(ConfigError) as here:
        read_yaml(bad)
    with pytest.raises(ConfigError) as apart:
        master.read_yaml_apart(bad)
    assert (apart.value.where, apart.value.reason) == (here.value.where, here.value.reason)


def test_a_child_that_dies_before_answering_leaves_the_reading_to_the_master(monkeypatch):
    monkeypatch.setattr(master, "_answer", lambda writer, text: os._exit(1))
    assert master.read_yaml_apart(DOCUMENT) == read_yaml(DOCUMENT)


def test_the_master_loads_the_config_without_pyyaml(tmp_path):
    """PyYAML would be resident in the master and in every worker it forks."""
    config = tmp_path / "proxy.yaml"
    config.write_text(
        "proxy:\n  services: [{name: a, domain: a.test, hosts: [{address: 127.0.0.1, port: 1}]}]\n"
    )
    code = (
        "import sys\n"
        "from app.process import master\n"
        "print(len(master.load_or_keep().services), 'yaml' in sys.modules)"
    )
    env = {**os.environ, "PROXY_CONFIG": str(config)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    assert out.stdout.split() == ["1", "False"]


def test_the_master_sets_up_hashlib_once_for_every_worker():
    """OpenSSL's digest setup runs in the master: forked workers never repeat it."""
    code = (
        "import sys, app.process.master\n"
        "app.process.master.import_for_workers()\n"
        "print('_hashlib' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True"]


class Cycle:
    def __init__(self):
        self.itself = self


def test_before_each_fork_the_master_collects_then_freezes_what_it_holds():
    try:
        kept = Cycle()
        master.freeze_for_fork()
        assert gc.get_freeze_count() > 0
        dropped = weakref.ref(kept)
        del kept  # garbage while frozen: the next fork's collection frees it
        master.freeze_for_fork()
        assert dropped() is None
    finally:
        gc.unfreeze()
