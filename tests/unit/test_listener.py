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
