"""MllpDpiSender (DpiSender port) against an MLLP listener started in the test."""

from __future__ import annotations

import asyncio
import socket

import pytest

from opensegur.connectors.dpi_mllp import MllpDpiSender
from opensegur.errors import RetryLater
from opensegur.transport.mllp import MllpServer

MDM = b"MSH|^~\\&|OPENSEGUR|CH|DPI|CH|20250101120000||MDM^T02^MDM_T02|MSG1|P|2.6\rEVN||20250101120000\r"


def ack(code: str) -> bytes:
    return f"MSH|^~\\&|DPI|CH|OPENSEGUR|CH|20250101120001||ACK^T02^ACK|A1|P|2.6\rMSA|{code}|MSG1\r".encode()


async def test_sends_message_and_returns_ack_whatever_its_code() -> None:
    received: list[bytes] = []
    replies = [ack("AA"), ack("AE")]

    async def handler(payload: bytes) -> bytes:
        received.append(payload)
        return replies.pop(0)

    server = MllpServer(handler, "127.0.0.1", 0)
    await server.start()
    try:
        sender = MllpDpiSender("127.0.0.1", server.port, timeout=5)
        assert await sender.send(MDM) == ack("AA")
        assert await sender.send(MDM) == ack("AE")  # business refusals are the flow's to read, not errors
    finally:
        await server.stop()
    assert received == [MDM, MDM]


async def test_connection_refused_is_retryable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(RetryLater, match="DPI injoignable"):
        await MllpDpiSender("127.0.0.1", port, timeout=2).send(MDM)


async def test_no_ack_within_timeout_is_retryable() -> None:
    async def slow(payload: bytes) -> bytes:
        await asyncio.sleep(5)
        return ack("AA")

    server = MllpServer(slow, "127.0.0.1", 0)
    await server.start()
    try:
        with pytest.raises(RetryLater):
            await MllpDpiSender("127.0.0.1", server.port, timeout=0.3).send(MDM)
    finally:
        await server.stop(timeout=0)


async def test_peer_closing_without_ack_is_retryable() -> None:
    async def crash(payload: bytes) -> bytes:
        raise RuntimeError("DPI handler crashed")

    server = MllpServer(crash, "127.0.0.1", 0)
    await server.start()
    try:
        with pytest.raises(RetryLater):
            await MllpDpiSender("127.0.0.1", server.port, timeout=5).send(MDM)
    finally:
        await server.stop()
