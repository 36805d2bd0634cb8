"""Loopback stand-ins for where alerts go: a webhook that records what it is sent, and an SMTP sink."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.observability.recorder import RecordingServer, recording_server
from tests.observability.test_prometheus import free_port


@pytest.fixture()
def webhook() -> Iterator[RecordingServer]:
    with recording_server(b"ok") as server:
        yield server


@pytest.fixture()
def smtp_sink() -> Iterator[tuple[int, list[Any]]]:
    from aiosmtpd.controller import Controller

    messages: list[Any] = []

    class Sink:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            messages.append(envelope)
            return "250 OK"

    port = free_port()
    controller = Controller(Sink(), hostname="127.0.0.1", port=port, auth_require_tls=False)
    controller.start()
    yield port, messages
    controller.stop()
