"""Shared observability mechanisms: logging now; metrics and tracing build on the same context."""
