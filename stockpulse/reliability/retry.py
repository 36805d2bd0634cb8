"""Retry policy: per stage, with per-provider overrides for the stage that talks to providers.

Failures are counted per (run, batch, stage) in Redis rather than with Celery's retry counter, because
waiting for a quota slot or an open circuit breaker re-queues a task without being a failure.
"""

from __future__ import annotations

import random
from dataclasses import replace

from stockpulse.config import StagePolicy, get_settings
from stockpulse.redis_conn import redis_client

FAILURES_KEY = "stockpulse:failures:{run_id}:{batch_no}:{stage}"


def stage_policy(stage: str, provider: str | None = None) -> StagePolicy:
    settings = get_settings()
    policy = settings.stages[stage]
    if stage == "fetch" and provider:
        overrides = settings.provider(provider).retry
        if overrides:
            policy = replace(policy, **overrides)
    return policy


def backoff_delay(failures: int, policy: StagePolicy, retry_after: float | None = None) -> float | None:
    """Delay before retry number ``failures`` (1-based): exponential, capped, with full jitter when the policy
    asks for it, and never shorter than the provider's Retry-After.

    None when the provider asks for a longer wait than the cap: the stage fails now rather than hold a
    message past the broker's visibility timeout.
    """
    ceiling = min(policy.backoff_cap_s, policy.backoff_base_s * (2 ** max(0, failures - 1)))
    delay = random.uniform(ceiling / 2, ceiling) if policy.jitter and ceiling > 0 else ceiling
    if retry_after is not None:
        if retry_after > policy.backoff_cap_s:
            return None
        delay = max(delay, retry_after)
    return delay


def record_failure(run_id: str, batch_no: int, stage: str) -> int:
    """Count one more transient failure of this stage; returns the count so far."""
    key = FAILURES_KEY.format(run_id=run_id, batch_no=batch_no, stage=stage)
    pipe = redis_client().pipeline()
    pipe.incr(key)
    pipe.expire(key, 7 * 86400)
    return int(pipe.execute()[0])


def reset_failures(run_id: str, batch_no: int, stage: str) -> None:
    redis_client().delete(FAILURES_KEY.format(run_id=run_id, batch_no=batch_no, stage=stage))
