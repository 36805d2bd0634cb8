"""OpenTelemetry tracing: one trace per pipeline run, across processes, queues and workers.

Off by default (``tracing.enabled``): the tracing SDK is then never imported, and :func:`span`,
:func:`event` and :func:`annotate` cost a module-global check. On, each process configures a tracer
provider of its own (service ``<service_name>-worker`` for stages and stream consumers, ``-cli`` for
commands that start runs) with the Celery, requests, SQLAlchemy and Redis instrumentations, exporting over
OTLP/HTTP to ``tracing.endpoint``.

What a trace is: a run's trigger (``start_run`` and its siblings, whoever calls them: beat's task, the
CLI, ``celery call``, a DLQ replay, a stream's gap fill) opens a root span ``pipeline.run`` in a trace of
its own, and the chains it enqueues carry that context in their task headers, so every fetch, transform
and load (and their retries) joins it, on whichever worker. Whether a run is traced is decided once at its
root (``sample_ratio``) and followed by every stage. A stream consumer's commit (validate, check, write one
batch of ticks) is a short trace of its own, ``stream.commit``, sampled at ``stream_sample_ratio``: a
stream has no run, and one trace per session would last hours. Spans outside a run or commit (broker
polling, the exporter's status queries, maintenance tasks) are never sampled: :class:`RunRootSampler`.

Attributes are bounded (pipeline, provider, data type, stage, counts; ours cut at 256 characters, any at
1024, an instrumentation's SQL statement included) and
every exported string goes through the same redaction as log lines (:class:`RedactingExporter`): a
configured secret or a key-looking URL parameter never leaves the process, whichever instrumentation
recorded it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from stockpulse.config import Settings, get_settings

log = logging.getLogger("stockpulse.tracing")
RUN_TRIGGER = "stockpulse.run.trigger"  # the attribute that marks a trace's root span (a run's, a commit's)
STREAM_TRIGGER = "stream"  # a stream commit's trigger, sampled at stream_sample_ratio
MAX_STRING = 256  # our attributes
MAX_ATTRIBUTE = 1024  # any attribute, an instrumentation's SQL statement included
_NULL = contextlib.nullcontext()
_tracer: Any = None  # the SDK tracer while tracing is on in this process
_provider: Any = None
_instrumentors: list[Any] = []


def enabled() -> bool:
    return _tracer is not None


def service_name(settings: Settings, component: str) -> str:
    return f"{settings.tracing.get('service_name', 'stockpulse')}-{component}"


def init_tracing(component: str, *, settings: Settings | None = None, exporter: Any = None) -> bool:
    """Configure tracing for this process when ``tracing.enabled`` (or an ``exporter`` is given, for tests);
    returns whether it is on. Called where a process starts: the worker before its pool forks (the SDK's
    batch processor restarts its thread in each child), the CLI."""
    global _tracer, _provider
    settings = settings or get_settings()
    conf = settings.tracing
    if _tracer is not None or not (conf.get("enabled") or exporter is not None):
        return _tracer is not None
    from opentelemetry.instrumentation.celery import CeleryInstrumentor
    from opentelemetry.instrumentation.redis import RedisInstrumentor
    from opentelemetry.instrumentation.requests import RequestsInstrumentor
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import SpanLimits, TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased

    from stockpulse import __version__

    if exporter is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=str(conf.get("endpoint")),
                                    timeout=float(conf.get("export_timeout_s", 10)))
    resource = Resource.create({"service.name": service_name(settings, component), "service.namespace": "stockpulse",
                                "service.version": __version__, "deployment.environment": settings.environment})
    classes = _sdk_classes()
    provider = TracerProvider(resource=resource,
                              sampler=ParentBased(classes["RunRootSampler"](
                                  float(conf.get("sample_ratio", 1.0)),
                                  {STREAM_TRIGGER: float(conf.get("stream_sample_ratio", 0.01))})),
                              span_limits=SpanLimits(max_attribute_length=MAX_ATTRIBUTE, max_events=64,
                                                     max_span_attributes=64))
    # Cutting a long attribute is the bound doing its job, not news for the log at every statement.
    logging.getLogger("opentelemetry.attributes").setLevel(logging.ERROR)
    provider.add_span_processor(BatchSpanProcessor(classes["RedactingExporter"](exporter)))
    _instrumentors[:] = [CeleryInstrumentor(), RequestsInstrumentor(), SQLAlchemyInstrumentor(), RedisInstrumentor()]
    for instrumentor in _instrumentors:
        # The SQLAlchemy instrumentation declares "< 2.1" but hooks the engine events that 2.1 keeps;
        # tests/observability/test_tracing.py checks its statement spans arrive.
        instrumentor.instrument(tracer_provider=provider, skip_dep_check=True)
    _provider, _tracer = provider, provider.get_tracer("stockpulse", __version__)
    from stockpulse.db.engine import dispose_all

    dispose_all()  # engines made before this are made again, instrumented
    log.info("tracing on (%s, OTLP %s, sample ratio %s)", service_name(settings, component), conf.get("endpoint"),
             conf.get("sample_ratio", 1.0))
    return True


def shutdown_tracing() -> None:
    """Flush and turn tracing off in this process (tests; process exit flushes by itself)."""
    global _tracer, _provider
    if _provider is None:
        return
    for instrumentor in _instrumentors:
        instrumentor.uninstrument()
    _instrumentors.clear()
    _provider.shutdown()
    _tracer = _provider = None
    from stockpulse.db.engine import dispose_all

    dispose_all()


def force_flush(timeout_s: float = 10) -> None:
    if _provider is not None:
        _provider.force_flush(int(timeout_s * 1000))


# ------------------------------------------------------------------------------------------------ spans


def bounded(attributes: dict[str, Any]) -> dict[str, Any]:
    """Attributes an exporter accepts, none of them large: scalars only, strings cut, None dropped."""
    out = {}
    for key, value in attributes.items():
        if value is None:
            continue
        if isinstance(value, str):
            out[key] = value[:MAX_STRING]
        elif isinstance(value, (bool, int, float)):
            out[key] = value
        else:
            out[key] = str(value)[:MAX_STRING]
    return out


def span(name: str, **attributes: Any) -> Any:
    """A child span of the current one while tracing is on; a no-op context otherwise."""
    if _tracer is None:
        return _NULL
    return _tracer.start_as_current_span(name, attributes=bounded(attributes))


@contextlib.contextmanager
def run_root(pipeline: str, trigger: str, *, name: str = "pipeline.run", **attributes: Any) -> Iterator[str | None]:
    """The root span of a run (or, ``name="stream.commit"``, of a stream commit), in a trace of its own
    (linked to whatever triggered it: a beat or ``celery call`` task, a stream consumer); yields the trace
    id when it is traced, else None."""
    if _tracer is None:
        yield None
        return
    from opentelemetry import context, trace

    current = trace.get_current_span().get_span_context()
    links = [trace.Link(current)] if current.is_valid else []
    with _tracer.start_as_current_span(name, context=context.Context(), links=links,
                                       attributes=bounded({RUN_TRIGGER: trigger, "stockpulse.pipeline": pipeline,
                                                           **attributes})) as root:
        ids = root.get_span_context()
        yield format(ids.trace_id, "032x") if ids.trace_flags.sampled else None


def event(name: str, **attributes: Any) -> None:
    """An event on the current span (a retry, a quota wait, a breaker rejection)."""
    if _tracer is None:
        return
    from opentelemetry import trace

    trace.get_current_span().add_event(name, bounded(attributes))


def annotate(**attributes: Any) -> None:
    """Attributes on the current span (a stage's pipeline, provider, run id; its record counts)."""
    if _tracer is None:
        return
    from opentelemetry import trace

    trace.get_current_span().set_attributes(bounded(attributes))


def current_ids() -> tuple[str, str] | None:
    """(trace id, span id) in hex of the current sampled span, for log lines and Sentry; None otherwise."""
    if _tracer is None:
        return None
    from opentelemetry import trace

    ids = trace.get_current_span().get_span_context()
    if not ids.is_valid or not ids.trace_flags.sampled:
        return None
    return format(ids.trace_id, "032x"), format(ids.span_id, "016x")


# ------------------------------------------------------------------------------------- sampler, export


_classes: dict[str, type] = {}


def _sdk_classes() -> dict[str, type]:
    """``RunRootSampler`` and ``RedactingExporter`` subclass the SDK's classes: defined on first use, so that
    importing this module never imports the SDK."""
    if _classes:
        return _classes
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
    from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult, TraceIdRatioBased
    from opentelemetry.trace import Status

    from stockpulse.config import redactor

    class _RunRootSampler(Sampler):
        """For spans without a parent: a run's root (marked ``stockpulse.run.trigger``) is sampled at the
        ratio, or at its trigger's own (``stream``); any other root (broker polling, status queries,
        maintenance tasks) is dropped."""

        def __init__(self, ratio: float, by_trigger: dict[str, float] | None = None):
            self.ratio = TraceIdRatioBased(ratio)
            self.by_trigger = {trigger: TraceIdRatioBased(r) for trigger, r in (by_trigger or {}).items()}

        def should_sample(self, parent_context: Any, trace_id: int, name: str, kind: Any = None,
                          attributes: Any = None, links: Any = None, trace_state: Any = None) -> Any:
            if attributes and RUN_TRIGGER in attributes:
                sampler = self.by_trigger.get(attributes[RUN_TRIGGER], self.ratio)
                return sampler.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)
            return SamplingResult(Decision.DROP)

        def get_description(self) -> str:
            return f"RunRootSampler({self.ratio.get_description()}, {sorted(self.by_trigger)})"

    def _clean(value: Any, redact: Callable[[str], str]) -> Any:
        if isinstance(value, str):
            return redact(value)
        if isinstance(value, (tuple, list)):
            return tuple(_clean(v, redact) for v in value)
        return value

    def _clean_all(attributes: Any, redact: Callable[[str], str]) -> dict[str, Any]:
        return {k: _clean(v, redact) for k, v in (attributes or {}).items()}

    class _RedactingExporter(SpanExporter):
        """Passes spans on with every string (name, attributes, events, status) redacted."""

        def __init__(self, inner: SpanExporter):
            self.inner = inner

        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            from opentelemetry.sdk.trace import Event

            redact = redactor()  # the secrets looked up once per batch
            clean = [ReadableSpan(
                name=redact(s.name), context=s.context, parent=s.parent, resource=s.resource,
                attributes=_clean_all(s.attributes, redact),
                events=[Event(e.name, _clean_all(e.attributes, redact), e.timestamp) for e in s.events],
                links=s.links, kind=s.kind, status=Status(s.status.status_code, redact(s.status.description))
                if s.status.description else s.status, start_time=s.start_time, end_time=s.end_time,
                instrumentation_scope=s.instrumentation_scope) for s in spans]
            return self.inner.export(clean)

        def shutdown(self) -> None:
            self.inner.shutdown()

        def force_flush(self, timeout_millis: int = 30000) -> bool:
            return self.inner.force_flush(timeout_millis)

    _classes.update(RunRootSampler=_RunRootSampler, RedactingExporter=_RedactingExporter)
    return _classes
