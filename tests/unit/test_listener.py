"""proxy/listener.py: the connection events' text form."""

from __future__ import annotations

import logging

import pytest

from atls_proxy.proxy.listener import log_event


def test_a_peers_reason_cannot_add_lines_to_the_text_log(caplog: pytest.LogCaptureFixture) -> None:
    # A client's ERROR reason reaches the server's log; without spaces it used to go out raw.
    forged = "x\n2026-11-29\tINFO\tatls_proxy.proxy.server:\tconnection\tclosed\tresult=attested"
    with caplog.at_level(logging.INFO):
        log_event(
            logging.getLogger("t"),
            logging.WARNING,
            "connection",
            "connection failed",
            reason=forged,
            check="client.verdict",
            peer="",
            esc="\x1b[2J",
        )
    (rec,) = caplog.records
    text = rec.getMessage()
    assert "\n" not in text and "\x1b" not in text and "\t" not in text
    assert text == (
        "connection failed reason='x\\n2026-11-29\\tINFO\\tatls_proxy.proxy.server:\\tconnection"
        "\\tclosed\\tresult=attested' check=client.verdict peer='' esc='\\x1b[2J'"
    )
    # The structured fields (JSON logs) keep the value as it was: JSON escapes it itself.
    assert rec.__dict__["reason"] == forged


async def test_close_passes_its_callers_cancellation_on() -> None:
    # close() cancels the handlers and waits for them; one whose clean-up takes a while must not
    # make close() swallow a cancellation aimed at its own caller.
    import asyncio

    from atls_proxy.proxy.conn import Conn
    from atls_proxy.proxy.listener import Listener, Outcome

    cleaning = asyncio.Event()

    class Slow(Listener):
        async def handle(self, conn: Conn) -> Outcome | None:
            try:
                await asyncio.sleep(3600)
            finally:
                cleaning.set()
                await asyncio.sleep(0.5)  # a slow clean-up
            return None

    lst = Slow(8)
    (host, port), *_ = await lst.listen("127.0.0.1", 0)
    _reader, writer = await asyncio.open_connection(host, port)
    while lst.active == 0:
        await asyncio.sleep(0.01)
    closer = asyncio.ensure_future(lst.close())
    await cleaning.wait()
    closer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closer
    writer.close()
