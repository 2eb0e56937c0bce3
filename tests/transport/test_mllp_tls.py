"""MLLP over TLS with client certificates: a DPI holding a certificate from the configured CA gets its ACK; a
client without a certificate, with one from another CA, or speaking plain MLLP, is refused before any message is
read, and the refusal is logged in French and counted."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from opensegur.security.pki import TestPki, client_ssl_context, ensure_test_pki
from opensegur.transport.mllp import MllpServer, send_message, tls_server_context

MESSAGE = b"MSH|^~\\&|GAM|CHU-X|OPENSEGUR|CHU-X|20240306111154||ADT^A28^ADT_A05|C1|P|2.5\r"
ACK = b"MSH|^~\\&|OPENSEGUR|CHU-X|GAM|CHU-X|20240306111155||ACK|A1|P|2.5\rMSA|AA|C1\r"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return ensure_test_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def other_pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    """Another CA, same shape: its client certificate is well formed but not issued by the listener's CA."""
    return ensure_test_pki(tmp_path_factory.mktemp("other-pki"))


class Tls:
    """A TLS listener of the test PKI that accepts loopback 127.0.0.1 only."""

    def __init__(self, pki: TestPki) -> None:
        self.received: list[bytes] = []
        self.server = MllpServer(
            self.handle,
            "127.0.0.1",
            0,
            ssl_context=tls_server_context(pki.server_cert, pki.server_key, pki.ca_cert),
            allow_peer=lambda address: address == "127.0.0.1",
        )

    async def handle(self, raw: bytes) -> bytes:
        self.received.append(raw)
        return ACK

    async def refusals(self, count: int) -> dict[str, int]:
        """The refusal counter once the server has seen ``count`` of them (the client may hear first)."""
        for _ in range(200):
            if sum(self.server.refused.values()) >= count:
                break
            await asyncio.sleep(0.01)
        return dict(self.server.refused)


@pytest.fixture
async def tls(pki: TestPki) -> AsyncIterator[Tls]:
    listener = Tls(pki)
    await listener.server.start()
    yield listener
    await listener.server.stop()


def trusting(pki: TestPki) -> ssl.SSLContext:
    """A client that verifies the listener but presents no certificate."""
    return ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki.ca_cert))


async def test_client_with_a_certificate_from_the_ca_gets_its_ack(tls: Tls, pki: TestPki) -> None:
    ctx = client_ssl_context(pki)
    for _ in range(3):  # several connections: the upgrade must never lose the ClientHello
        assert await send_message("127.0.0.1", tls.server.port, MESSAGE, ssl_context=ctx) == ACK
    assert tls.received == [MESSAGE] * 3 and not tls.server.refused


async def test_client_without_certificate_is_refused(
    tls: Tls, pki: TestPki, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="opensegur.transport.mllp")
    with pytest.raises(OSError):  # ssl.SSLError (certificate required) or the connection closed unanswered
        await send_message("127.0.0.1", tls.server.port, MESSAGE, ssl_context=trusting(pki))
    assert await tls.refusals(1) == {"tls": 1}
    assert tls.received == []
    assert "MLLP : connexion TLS de 127.0.0.1 refusée" in caplog.text


async def test_client_with_a_certificate_from_another_ca_is_refused(
    tls: Tls, pki: TestPki, other_pki: TestPki
) -> None:
    ctx = trusting(pki)
    ctx.load_cert_chain(str(other_pki.client_cert), str(other_pki.client_key))
    with pytest.raises(OSError):
        await send_message("127.0.0.1", tls.server.port, MESSAGE, ssl_context=ctx)
    assert await tls.refusals(1) == {"tls": 1}
    assert tls.received == []


async def test_plain_mllp_to_a_tls_listener_is_refused(tls: Tls) -> None:
    with pytest.raises(OSError):
        await send_message("127.0.0.1", tls.server.port, MESSAGE, timeout=5)
    assert await tls.refusals(1) == {"tls": 1}
    assert tls.received == []


async def test_an_undeclared_address_is_refused_before_any_tls_work(tls: Tls, pki: TestPki) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", tls.server.port, local_addr=("127.0.0.2", 0))
    assert await reader.read() == b""  # closed by the listener without a handshake
    writer.close()
    assert await tls.refusals(1) == {"adresse": 1}


def test_the_listener_refuses_a_missing_client_ca(pki: TestPki, tmp_path: Path) -> None:
    with pytest.raises(OSError):
        tls_server_context(pki.server_cert, pki.server_key, tmp_path / "absent.pem")
