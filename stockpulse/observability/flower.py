"""Flower, started the one way every deployment uses (CLI, standalone, compose).

Flower shows task arguments and can revoke tasks, so it never listens beyond loopback without basic auth.
The credentials reach Flower through its FLOWER_BASIC_AUTH variable, not its command line, which any
local user can read in ``ps``.
"""

from __future__ import annotations

import ipaddress
import os
import sys

from stockpulse.config import Settings, get_settings
from stockpulse.errors import ConfigError


def is_loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def flower_command(settings: Settings | None = None, *, address: str | None = None,
                   port: int | None = None) -> tuple[list[str], dict[str, str]]:
    """The argv and environment that start Flower as configured; ConfigError if it would be open."""
    settings = settings or get_settings()
    conf = settings.flower
    address = address or conf["address"]
    port = int(port or conf["port"])
    auth = conf.get("basic_auth")
    if not auth and not is_loopback(address):
        raise ConfigError(f"flower.basic_auth: required when Flower listens on {address} (not loopback); set "
                          "STOCKPULSE_FLOWER__BASIC_AUTH=user:password (or _FILE), or bind flower.address to "
                          "127.0.0.1")
    argv = [sys.executable, "-m", "celery", "-A", "stockpulse", "flower", f"--address={address}",
            f"--port={port}", f"--max_tasks={int(conf['max_tasks'])}"]
    if conf.get("url_prefix"):
        argv.append(f"--url_prefix={conf['url_prefix']}")
    env = dict(os.environ)
    env.pop("FLOWER_BASIC_AUTH", None)
    if auth:
        env["FLOWER_BASIC_AUTH"] = auth
    return argv, env
