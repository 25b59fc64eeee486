"""The config the gunicorn master validated, inherited by every worker it forks.

gunicorn.conf.py runs in the master at start and again on every SIGHUP. It
loads proxy.yaml through ``load_or_keep``: at start a bad file stops lbproxy
before any worker exists; on reload a bad file is logged and the previous
config stays active. Workers are forked from the master, so they find the
validated config here in memory and never parse the file themselves: a bad
file can never make a worker fail to boot (which would stop gunicorn).
"""

from __future__ import annotations

import logging

from app.config import ConfigError, ProxyConfig, config_path, load_config

log = logging.getLogger("gunicorn.error")

_active: ProxyConfig | None = None


def active_config() -> ProxyConfig | None:
    return _active


def load_or_keep() -> ProxyConfig:
    """Load proxy.yaml; on error, keep the active config or exit if there is none."""
    global _active
    path = config_path()
    try:
        config = load_config(path)
    except ConfigError as error:
        if _active is None:
            raise SystemExit(f"lbproxy: refusing to start: {path}: {error}") from None
        log.error("lbproxy: reload refused, keeping the running config: %s: %s", path, error)
        return _active
    if _active is not None:
        log.info("lbproxy: reloaded %s (%d services)", path, len(config.services))
    _active = config
    return config
