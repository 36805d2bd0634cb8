"""Tracing with the real OpenTelemetry SDK: a run executed by a real worker is one trace, received by a
loopback OTLP endpoint in this process; off, nothing is even imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from stockpulse.sim.otlp import OTLPSink, ReceivedSpan
from tests.conftest import CANARY_KEY, ROOT, Stack

END = datetime.now(UTC).date()
START = END - timedelta(days=60)  # Alpha Vantage's compact series: the latest 100 sessions


@pytest.fixture()
def memory_tracing() -> Iterator[Any]:
    """Tracing on in this process, spans kept in memory (the SDK's own in-memory exporter)."""
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from stockpulse.observability import tracing

    exporter = InMemorySpanExporter()
    assert tracing.init_tracing("test", exporter=exporter)
    try:
        yield exporter
    finally:
        tracing.shutdown_tracing()


def test_off_by_default_the_tracing_sdk_is_never_loaded_and_spans_are_no_ops() -> None:
    script = """
import sys
from stockpulse.observability import tracing
import stockpulse.pipeline.tasks, stockpulse.celery_app, stockpulse.providers.base
assert tracing.init_tracing("worker") is False
with tracing.span("x", a=1) as s, tracing.run_root("p", "manual") as trace_id:
    tracing.event("retry", attempt=2)
    assert s is None and trace_id is None and tracing.current_ids() is None
# redis-py imports the OpenTelemetry API (and the SDK's metrics) for its own, optional, metrics; the
# tracing SDK, the exporter and the instrumentations must not be loaded.
ours = ("opentelemetry.sdk.trace", "opentelemetry.exporter", "opentelemetry.instrumentation")
print(sorted(m for m in sys.modules if m.startswith(ours)))
"""
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=dict(os.environ), capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_only_a_run_s_root_starts_a_trace_and_children_follow_it(memory_tracing: Any) -> None:
    from stockpulse.observability import tracing

    with tracing.span("SELECT outside a run"):  # broker polling, status queries: not traced
        assert tracing.current_ids() is None
    with tracing.run_root("daily_bars", "manual") as trace_id:
        assert trace_id is not None and len(trace_id) == 32
        with tracing.span("provider.request", **{"stockpulse.provider": "alpaca", "huge": "x" * 10_000}):
            tracing.event("retry", attempt=2, delay_s=0.5, error_type="TransientError")
            assert tracing.current_ids()[0] == trace_id
    tracing.force_flush()
    spans = {s.name: s for s in memory_tracing.get_finished_spans()}
    assert set(spans) == {"pipeline.run", "provider.request"}
    root, child = spans["pipeline.run"], spans["provider.request"]
    assert root.parent is None and child.parent.span_id == root.context.span_id
    assert root.attributes["stockpulse.run.trigger"] == "manual"
    assert len(child.attributes["huge"]) == 256  # bounded
    [retry] = child.events
    assert retry.name == "retry" and dict(retry.attributes) == {"attempt": 2, "delay_s": 0.5,
                                                               "error_type": "TransientError"}


def test_a_run_started_inside_another_span_gets_a_trace_of_its_own_linked_to_it(memory_tracing: Any) -> None:
    from stockpulse.observability import tracing

    with tracing.run_root("a", "schedule") as outer, tracing.run_root("b", "manual") as inner:
        assert outer != inner
    tracing.force_flush()
    spans = {s.attributes["stockpulse.pipeline"]: s for s in memory_tracing.get_finished_spans()}
    assert spans["b"].parent is None and spans["b"].links[0].context.span_id == spans["a"].context.span_id


@pytest.mark.parametrize(("run_ratio", "stream_ratio"), [("0", "1"), ("1", "0")])
def test_the_sample_ratio_is_decided_at_the_root_and_streams_have_their_own(
        monkeypatch: pytest.MonkeyPatch, run_ratio: str, stream_ratio: str) -> None:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from stockpulse.config import reset_settings
    from stockpulse.observability import tracing

    monkeypatch.setenv("STOCKPULSE_TRACING__SAMPLE_RATIO", run_ratio)
    monkeypatch.setenv("STOCKPULSE_TRACING__STREAM_SAMPLE_RATIO", stream_ratio)
    reset_settings()
    exporter = InMemorySpanExporter()
    tracing.init_tracing("test", exporter=exporter)
    try:
        with tracing.run_root("daily_bars", "manual") as run_trace, tracing.span("child"):
            assert (run_trace is not None) == (run_ratio == "1")
            assert (tracing.current_ids() is not None) == (run_ratio == "1")
        with tracing.run_root("finnhub_trades", tracing.STREAM_TRIGGER, name="stream.commit") as commit_trace, \
                tracing.span("db.load"):
            assert (commit_trace is not None) == (stream_ratio == "1")
        tracing.force_flush()
        names = sorted(s.name for s in exporter.get_finished_spans())
        assert names == (["child", "pipeline.run"] if run_ratio == "1" else ["db.load", "stream.commit"])
    finally:
        tracing.shutdown_tracing()
        monkeypatch.undo()
        reset_settings()


def test_secrets_are_redacted_from_every_exported_string(memory_tracing: Any) -> None:
    from stockpulse.observability import tracing

    with tracing.run_root("p", "manual"), tracing.span("GET https://x.test/query?apikey=" + CANARY_KEY,
                                                       **{"url.full": "https://x.test/query?token=" + CANARY_KEY,
                                                          "secret": "key test-secret in a message"}):
        tracing.event("retry", error=f"HTTP 500 on /query?apikey={CANARY_KEY}")
    tracing.force_flush()
    exported = repr([(s.name, dict(s.attributes), [(e.name, dict(e.attributes)) for e in s.events])
                     for s in memory_tracing.get_finished_spans()])
    assert CANARY_KEY not in exported and "test-secret" not in exported  # the alpaca secret of the test config
    assert "apikey=***" in exported and "token=***" in exported


@pytest.mark.integration
def test_a_quota_wait_and_a_breaker_rejection_are_events_of_the_provider_request(
        memory_tracing: Any, redis_client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from stockpulse.config import get_settings, reset_settings
    from stockpulse.errors import TransientError
    from stockpulse.observability import tracing
    from stockpulse.providers import PROVIDERS, ProviderClient
    from stockpulse.reliability import breaker, quotas

    def unavailable() -> None:
        raise TransientError("HTTP 503")

    monkeypatch.setenv("STOCKPULSE_PROVIDERS__COINBASE__RATE_LIMIT", "1/minute")
    monkeypatch.setenv("STOCKPULSE_PROVIDERS__POLYGON__BREAKER__FAIL_MAX", "1")
    reset_settings()
    breaker.get_breaker.cache_clear()
    for key in redis_client.scan_iter("stockpulse:breaker:polygon*"):
        redis_client.delete(key)
    try:
        quotas.reset("coinbase")
        quotas.acquire("coinbase")  # the minute's only slot: the next request must wait
        with pytest.raises(TransientError):
            breaker.call("polygon", unavailable)  # one failure opens it here
        settings = get_settings()
        with tracing.run_root("polygon_daily_bars", "manual"):
            for name, error in (("coinbase", quotas.QuotaWait), ("polygon", breaker.BreakerOpen)):
                client = ProviderClient(PROVIDERS[name], settings.provider(name))
                with pytest.raises(error):
                    client.get_json("/never/sent", params={"apiKey": CANARY_KEY})
    finally:
        quotas.reset("coinbase")
        for key in redis_client.scan_iter("stockpulse:breaker:polygon*"):
            redis_client.delete(key)
        monkeypatch.undo()
        reset_settings()
        breaker.get_breaker.cache_clear()
    tracing.force_flush()
    requests = {s.attributes["stockpulse.provider"]: s for s in memory_tracing.get_finished_spans()
                if s.name == "provider.request"}
    # Each request span has its event, then the SDK's own "exception" event for the error it raised.
    [wait] = [e for e in requests["coinbase"].events if e.name != "exception"]
    assert wait.name == "quota.wait" and 0 < wait.attributes["retry_after_s"] <= 60
    [rejected] = [e for e in requests["polygon"].events if e.name != "exception"]
    assert rejected.name == "breaker.rejected" and rejected.attributes["retry_after_s"] > 0
    assert requests["polygon"].attributes["url.path"] == "/never/sent"
    # Neither reached the provider: under them, only the quota's and the breaker's Redis commands.
    ids = {s.context.span_id for s in requests.values()}
    under = [s for s in memory_tracing.get_finished_spans() if s.parent and s.parent.span_id in ids]
    assert under and all(s.attributes.get("db.system") == "redis" for s in under)

# ------------------------------------------------------------------------------------ through a worker


@pytest.mark.integration
def test_a_run_by_a_real_worker_is_one_trace_with_its_stages_requests_retries_and_no_secret(
        clean_stack: Stack, sim: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from stockpulse.config import reset_settings
    from stockpulse.observability import tracing

    with OTLPSink() as sink:
        env = {"STOCKPULSE_TRACING__ENABLED": "true", "STOCKPULSE_TRACING__ENDPOINT": sink.endpoint,
               "OTEL_BSP_SCHEDULE_DELAY": "100"}
        worker = clean_stack.restart_worker(STOCKPULSE_PROVIDERS__ALPHAVANTAGE__API_KEY=CANARY_KEY, **env)
        for name, value in env.items():  # this process is the "CLI" that starts the run
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("STOCKPULSE_PROVIDERS__ALPHAVANTAGE__API_KEY", CANARY_KEY)
        reset_settings()
        assert tracing.init_tracing("cli")
        try:
            sim.fault("alphavantage", "drop", times=1)  # the first fetch fails: a stage retry
            run = clean_stack.run("alphavantage_daily_bars", symbols=["IBM"], start=START, end=END)
        finally:
            tracing.shutdown_tracing()  # flushes the root span
            monkeypatch.undo()
            reset_settings()
        assert run.status == "succeeded" and run.trace_id and len(run.trace_id) == 32
        stages = {f"run/stockpulse.pipeline.{stage}" for stage in ("fetch", "transform", "load")}
        spans = sink.wait_for(run.trace_id, {"pipeline.run", "provider.request", "GET", "db.load", *stages})

        # One trace: every span of the run, in whichever process, is in it; the root names the run.
        assert {s.trace_id for s in sink.received() if s.attributes.get("stockpulse.run_id") == run.id} == \
            {run.trace_id}
        [root] = [s for s in spans if s.name == "pipeline.run"]
        assert root.parent_span_id == "" and root.service == "stockpulse-cli"
        assert root.attributes["stockpulse.run_id"] == run.id
        assert root.attributes["stockpulse.run.trigger"] == "manual"
        by_name: dict[str, list[ReceivedSpan]] = {}
        for s in spans:
            by_name.setdefault(s.name, []).append(s)
        for name in stages:
            for stage_span in by_name[name]:
                assert stage_span.service == "stockpulse-worker"
                assert stage_span.attributes["stockpulse.run_id"] == run.id
                assert stage_span.attributes["stockpulse.provider"] == "alphavantage"
        # The retried fetch: two executions, the first with its retry event (attempt and delay).
        fetches = sorted(by_name["run/stockpulse.pipeline.fetch"], key=lambda s: s.start_ns)
        assert len(fetches) == 2
        [retry] = [attrs for name, attrs in fetches[0].events if name == "retry"]
        assert retry["attempt"] == 2 and retry["delay_s"] > 0 and retry["error_type"] == "TransientError"
        assert fetches[1].attributes["stockpulse.attempt"] == 2
        [load] = by_name["run/stockpulse.pipeline.load"]
        assert load.attributes["stockpulse.records_loaded"] > 0
        assert any(s.attributes.get("db.collection.name") == "bars" for s in by_name["db.load"])
        # The provider request is under the fetch that made it, its HTTP call under it; database statements
        # and Redis commands (arguments as ?) are there too; nothing exported carries the key.
        ids = {s.span_id: s for s in spans}
        request = by_name["provider.request"][-1]
        assert ids[request.parent_span_id].name == "run/stockpulse.pipeline.fetch"
        under = [s for s in spans if s.parent_span_id == request.span_id]
        [http] = [s for s in under if s.attributes.get("db.system") != "redis"]  # (quota and breaker: Redis)
        assert http.name == "GET" and "apikey=***" in str(http.attributes)  # the URL is there, its key is not
        assert all(CANARY_KEY.encode() not in body for body in sink.raw)
        statements = [s.attributes["db.statement"] for s in spans
                      if s.attributes.get("db.system") in ("sqlite", "postgresql") and "db.statement" in s.attributes]
        assert any(sql.startswith("UPDATE pipeline_run_batches") for sql in statements)  # the stages' bookkeeping
        redis_words = {w for s in spans if s.attributes.get("db.system") == "redis"
                       for w in s.attributes["db.statement"].split()}
        assert redis_words and all(w == "?" or (w.isalpha() and w.isupper()) for w in redis_words)  # no values

        # From the trace back to the run.
        back = subprocess.run([sys.executable, "-m", "stockpulse.cli", "runs", "--trace", run.trace_id, "--json"],
                              cwd=ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=60)
        assert back.returncode == 0, back.stderr
        assert [json.loads(line)["id"] for line in back.stdout.splitlines()] == [run.id]

        # Every log line of the run's tasks carries the trace id (and the span it was logged in).
        lines = [json.loads(line) for line in worker.log().splitlines() if line.startswith("{")]
        mine = [entry for entry in lines if entry.get("run_id") == run.id]
        assert mine and all(entry.get("trace_id") == run.trace_id and len(entry.get("span_id", "")) == 16
                            for entry in mine)


@pytest.mark.integration
def test_with_tracing_off_a_worker_exports_nothing(clean_stack: Stack, sim: Any) -> None:
    with OTLPSink() as sink:
        # The endpoint is set, tracing is not enabled: the worker must not send a thing.
        worker = clean_stack.restart_worker(STOCKPULSE_TRACING__ENDPOINT=sink.endpoint, OTEL_BSP_SCHEDULE_DELAY="100")
        run = clean_stack.run("alphavantage_daily_bars", symbols=["IBM"], start=START, end=END)
        assert run.status == "succeeded" and run.trace_id is None
        time.sleep(1.0)  # several export intervals
        assert sink.received() == [] and sink.raw == []
        assert '"trace_id"' not in worker.log()


@pytest.mark.integration
def test_a_dlq_replay_is_a_run_of_its_own_with_a_trace_of_its_own(clean_stack: Stack, sim: Any,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from stockpulse.config import reset_settings
    from stockpulse.observability import tracing
    from stockpulse.pipeline.runs import get_run
    from stockpulse.reliability import dlq

    with OTLPSink() as sink:
        env = {"STOCKPULSE_TRACING__ENABLED": "true", "STOCKPULSE_TRACING__ENDPOINT": sink.endpoint,
               "OTEL_BSP_SCHEDULE_DELAY": "100"}
        clean_stack.restart_worker(**env)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        reset_settings()
        assert tracing.init_tracing("cli")
        try:
            sim.fault("alphavantage", "drop", times=20)  # every attempt: the batch is dead-lettered
            failed = clean_stack.run("alphavantage_daily_bars", symbols=["IBM"], start=START, end=END, timeout=120)
            sim.clear()
            [entry] = dlq.entries()
            replayed = dlq.replay(entry.id)  # as `stockpulse dlq replay` does
            run = clean_stack.wait(replayed["replay_run"])
        finally:
            tracing.shutdown_tracing()
            monkeypatch.undo()
            reset_settings()
        assert failed.status == "failed" and run.status == "succeeded"
        assert failed.trace_id and run.trace_id and run.trace_id != failed.trace_id
        # The failed run's trace shows its fetch attempts and their retry events.
        failed_spans = sink.wait_for(failed.trace_id, {"pipeline.run", "run/stockpulse.pipeline.fetch"})
        retries = [attrs for s in failed_spans for name, attrs in s.events if name == "retry"]
        assert len(retries) >= 2 and sorted(r["attempt"] for r in retries)[:2] == [2, 3]
        spans = sink.wait_for(run.trace_id, {"pipeline.run", "run/stockpulse.pipeline.fetch",
                                               "run/stockpulse.pipeline.load"})
        [root] = [s for s in spans if s.name == "pipeline.run"]
        assert root.attributes["stockpulse.run.trigger"] == "replay"
        assert root.attributes["stockpulse.replay_of"] == entry.id and root.attributes["stockpulse.run_id"] == run.id
        assert get_run(run.id).trace_id == run.trace_id
