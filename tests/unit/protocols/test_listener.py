"""The listener skeleton every protocol server shares: caps per IP and in total, the goodbye
on shutdown, then a bounded wind-down that aborts connections that will not finish."""

from __future__ import annotations

import asyncio
import time

from arcly.engine import ShutdownToken
from arcly.protocols.listener import Admission, Limits, Listener, is_loopback
from tests.support.wait import eventually


async def _closed(reader: asyncio.StreamReader, timeout: float = 5.0) -> bool:
    try:
        return await asyncio.wait_for(reader.read(1), timeout) == b""
    except (ConnectionError, TimeoutError):
        return True


async def test_connections_over_the_per_ip_cap_are_closed_and_counted() -> None:
    admission = Admission(Limits(max_connections_per_ip=2))
    listener = Listener("test", "127.0.0.1", 0, admission, read_limit=1024)
    held = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await held.wait()

    token = ShutdownToken()
    serving = asyncio.create_task(listener.serve(handle, token))
    await asyncio.wait_for(listener.ready.wait(), 5)
    port = listener.addresses[0][1]
    kept = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
    await eventually(lambda: admission.connections == 2)
    refused = await asyncio.open_connection("127.0.0.1", port)
    assert await _closed(refused[0]), "over the cap: closed at once"
    assert admission.refused == {"max_connections_per_ip": 1}
    assert admission.connections == 2
    held.set()
    await eventually(lambda: admission.connections == 0, message="slots never freed")
    for _, writer in [*kept, refused]:
        writer.close()
    token.cancel()
    await asyncio.wait_for(serving, 5)


async def test_shutdown_says_goodbye_then_aborts_what_will_not_end() -> None:
    admission = Admission()
    listener = Listener("test", "127.0.0.1", 0, admission, read_limit=1024, grace=0.3)
    events: list[str] = []

    async def stubborn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await reader.read(1024):  # ignores shutdown; ends only when aborted
                pass
            events.append("handler saw the abort")
        finally:
            events.append("handler ended")

    async def goodbye() -> None:
        events.append("goodbye")

    token = ShutdownToken()
    serving = asyncio.create_task(listener.serve(stubborn, token, goodbye=goodbye))
    await asyncio.wait_for(listener.ready.wait(), 5)
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.addresses[0][1])
    await eventually(lambda: admission.connections == 1)
    started = time.monotonic()
    token.cancel()
    await asyncio.wait_for(serving, 5)
    assert 0.3 <= time.monotonic() - started < 2.5, "grace, then abort, then at most 1 s"
    assert events[0] == "goodbye" and "handler ended" in events
    assert await _closed(reader), "the client sees the connection end"
    assert listener.stopping and admission.connections == 0
    writer.close()
    try:  # the listener no longer accepts
        _, late = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", listener.addresses[0][1]), 2)
        late.close()
        accepted = True
    except OSError:
        accepted = False
    assert not accepted


def test_loopback_addresses_are_recognized() -> None:
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.9.9.9", "::1", "[::1]", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "10.0.0.1", "::", "example.com", ""))
