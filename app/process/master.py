"""The config the gunicorn master validated, inherited by every worker it forks.

gunicorn.conf.py runs in the master at start and again on every SIGHUP. It
loads proxy.yaml through ``load_or_keep``: at start a bad file stops lbproxy
before any worker exists; on reload a bad file is logged and the previous
config stays active. Workers are forked from the master, so they find the
validated config here in memory and never parse the file themselves: a bad
file can never make a worker fail to boot (which would stop gunicorn). The
YAML itself is parsed in a short-lived child of the master (``read_yaml_apart``),
so PyYAML is resident in no process that stays.

The master also maps the pod's shared area (app/traffic/shared.py) when it
starts (gunicorn's ``on_starting``, which knows the worker count, however it
was given), places every config it accepts on reload in it (a config that does
not fit is refused like an invalid one), and gives each worker it forks a
column of its own, freed when the worker exits.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import pickle
from typing import Any, NoReturn

import setproctitle

from app.config import ConfigError, ProxyConfig, config_path, load_config, problems, read_yaml
from app.traffic.shared import Capacity, SharedArea, Zone

log = logging.getLogger("gunicorn.error")

_active: ProxyConfig | None = None
_area: SharedArea | None = None
_zone: Zone | None = None


def active_config() -> ProxyConfig | None:
    return _active


def active_zone() -> Zone | None:
    """The shared area as the active config places it (None outside gunicorn)."""
    return _zone


def load_or_keep() -> ProxyConfig:
    """Load proxy.yaml; on error, keep the active config or exit if there is none."""
    global _active, _zone
    path = config_path()
    try:
        config = load_config(path, read=read_yaml_apart)
        zone = _area.place(config) if _area is not None else None
    except ConfigError as error:
        found = "; ".join(f"{path}: {problem}" for problem in problems(error))
        if _active is None:
            raise SystemExit(f"lbproxy: refusing to start: {found}") from None
        log.error("lbproxy: reload refused, keeping the running config: %s", found)
        return _active
    if _active is not None:
        log.info("lbproxy: reloaded %s (%d services)", path, len(config.services))
    _active, _zone = config, zone
    return config


def read_yaml_apart(text: str) -> Any:
    """``read_yaml`` in a forked child, whose answer comes back pickled.

    PyYAML serves the master alone (workers never parse), yet every module the
    master holds when it forks is resident in each worker too: loaded in a
    child that exits, it is resident nowhere. Where no child can be made, or
    it dies before it answers, the text is parsed here.
    """
    try:
        reader, writer = os.pipe()
    except OSError:
        return read_yaml(text)
    try:
        pid = os.fork()
    except OSError:
        os.close(reader)
        os.close(writer)
        return read_yaml(text)
    if pid == 0:
        os.close(reader)
        _answer(writer, text)
    os.close(writer)
    with os.fdopen(reader, "rb") as pipe:
        answer = pipe.read()
    _reap(pid)
    try:
        kind, value = pickle.loads(answer)
    except (EOFError, pickle.UnpicklingError):
        return read_yaml(text)
    if kind == "problem":
        raise ConfigError(*value)
    return value


def _answer(writer: int, text: str) -> NoReturn:
    """In the child: the document, or where and why the text is not YAML; then exit
    at once (no exit handlers, no flush of what the master has buffered)."""
    try:
        try:
            answer = ("document", read_yaml(text))
        except ConfigError as error:
            answer = ("problem", (error.where, error.reason))
        with os.fdopen(writer, "wb") as pipe:
            pickle.dump(answer, pipe, protocol=pickle.HIGHEST_PROTOCOL)
    finally:
        os._exit(0)


def _reap(pid: int) -> None:
    # gunicorn's arbiter reaps any child it finds exited; this one may be gone.
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def set_title(role: str) -> None:
    """``ps`` shows "lbproxy: master" and "lbproxy: worker" (setproctitle, a requirement)."""
    setproctitle.setproctitle(f"lbproxy: {role}")


def start_area(workers: int) -> None:
    """gunicorn's ``on_starting``: map the shared area for the config and ``workers``."""
    global _area, _zone
    if _active is None or _area is not None:
        return
    _area = SharedArea(Capacity.for_config(_active, workers))
    _area.create_lock()
    _zone = _area.place(_active)


_private_metrics_dir = None  # made by start_prometheus, removed by stop_prometheus


def start_prometheus() -> None:
    """gunicorn's ``on_starting``: the multiprocess directory of /metrics, emptied
    once (never on SIGHUP: counters would go back to zero)."""
    global _private_metrics_dir
    from app.observe.prometheus import prepare_directory

    _private_metrics_dir = prepare_directory()


def stop_prometheus() -> None:
    """gunicorn's ``on_exit``: a private directory goes with the master."""
    from app.observe.prometheus import remove_directory

    if _private_metrics_dir is not None:
        remove_directory(_private_metrics_dir)


def import_for_workers() -> None:
    """gunicorn's ``on_starting``: imports whose native setup every worker would
    otherwise repeat, done once here, before the first fork.

    ``hashlib``'s import asks OpenSSL for every digest it provides, a walk
    through much of libcrypto's code. A forked worker inherits the result, but
    not the master's mappings of those code pages: had it imported hashlib
    itself (urllib3 and the traffic modules do), RSS would count each page it
    walked once more per worker.
    """
    import hashlib  # noqa: F401


def freeze_for_fork() -> None:
    """gunicorn's ``pre_fork``: all the master holds goes to the garbage
    collector's permanent generation, which the forked worker inherits.

    The worker's collector then never walks the objects it inherited: a walk
    writes to every object (copying its page out of the one the master shares,
    which PSS shows) and runs each type's traversal code (RSS counts every
    page of it the worker touches). First the master unfreezes and collects
    what became garbage since the last fork (a reload's old config), so
    nothing stays frozen for good.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def assign_column(worker) -> None:
    """gunicorn's ``pre_fork``: the worker about to be forked gets a column."""
    if _area is not None:
        worker.lbproxy_column = _area.take_column()


def free_column(worker) -> None:
    """gunicorn's ``child_exit``: the worker's requests in flight are gone with it."""
    column = getattr(worker, "lbproxy_column", None)
    if _area is not None and column is not None:
        _area.release_column(column)
    from app.observe.prometheus import process_dead

    process_dead(worker.pid)
