"""Celery tasks of the real-time streams.

``stockpulse.realtime.consume`` is a long-lived task on the pipeline's queue (``realtime``): it holds the
shard's lease while it streams and returns when the lease is lost, its session length is reached or the
worker shuts down (warm shutdown sets the stop event, so the lease is released at once). Run realtime
workers with the threads pool (workers/workers.yaml), which runs each consumer in a thread of its own.
``stockpulse.maintenance.supervise_streams`` (every 30 s from beat) starts a consumer for every shard whose
lease is free, so a shard whose worker died is taken over within one lease TTL.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from typing import Any

from celery import signals

from stockpulse.celery_app import app
from stockpulse.config import get_settings
from stockpulse.redis_conn import redis_client
from stockpulse.streams.consumer import StreamConsumer, StreamOptions, shard_name, shards, starting_key
from stockpulse.streams.lease import Lease

log = logging.getLogger("stockpulse.streams")
STOP = threading.Event()  # set when this worker shuts down


@signals.worker_shutting_down.connect
def _stop_consumers(**_: Any) -> None:
    STOP.set()


@app.task(name="stockpulse.realtime.consume", acks_late=False, time_limit=None, soft_time_limit=None)
def consume(pipeline: str, shard: int) -> dict[str, Any]:
    """Stream one shard of PIPELINE until the lease is lost, the session ends or the worker stops. The
    message is acknowledged at once: a consumer that dies is replaced by the supervisor, not redelivered."""
    result = StreamConsumer(pipeline, shard, stop=STOP).run()
    return dataclasses.asdict(result)


def stream_pipelines() -> list[Any]:
    from stockpulse.providers import PROVIDERS

    return [p for p in get_settings().pipelines.values()
            if p.enabled and p.data_type in PROVIDERS[p.provider].streams]


@app.task(name="stockpulse.maintenance.supervise_streams")
def supervise_streams() -> list[str]:
    """Start a consumer for every shard of every enabled stream pipeline whose lease is free."""
    client, started = redis_client(), []
    for pipe in stream_pipelines():
        for shard_no in range(len(shards(pipe))):
            name = shard_name(pipe.name, shard_no)
            if Lease.holder(client, name) is not None:
                continue
            # A consumer just sent has not taken the lease yet: do not send a second one meanwhile (the
            # consumer clears the mark once it holds the lease; it expires with the lease TTL otherwise).
            ttl = max(1, int(StreamOptions.of(pipe).lease_ttl_s))
            if not client.set(starting_key(name), 1, nx=True, ex=ttl):
                continue
            consume.apply_async(kwargs={"pipeline": pipe.name, "shard": shard_no})
            started.append(name)
    if started:
        log.info("started stream consumers for %s", ", ".join(started), extra={"shards": started})
    return started
