"""One Redis client per URL per process (redis-py pools are fork-aware)."""

from __future__ import annotations

import redis

from stockpulse.config import get_settings

_clients: dict[str, redis.Redis] = {}


def redis_client(url: str | None = None) -> redis.Redis:
    url = url or get_settings().redis_url
    client = _clients.get(url)
    if client is None:
        client = redis.Redis.from_url(url, socket_timeout=30, socket_connect_timeout=5, health_check_interval=30)
        _clients[url] = client
    return client
