"""MLLP listeners accept only the senders the hospital's configuration declares (``senders`` of dpis.toml).

A refused peer is closed at accept: the handler never runs, nothing is answered, the refusal is logged in French
with the address only and counted. The second loopback address 127.0.0.2 plays a host that is not declared.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from opensegur.flows.senders import LOOPBACK, SenderAllowlist, sender_networks
from opensegur.hospital.model import DpiConfig, HospitalConfig
from opensegur.ops.demo import demo_config
from opensegur.transport.mllp import MllpServer, frame, peer_address, read_frame, send_message

MESSAGE = (
    b"MSH|^~\\&|GAM|CHU-X|OPENSEGUR|CHU-X|20240306111154||ADT^A28^ADT_A05|C1|P|2.5\r"
    b"PID|1||42^^^CHU-X&000897406&N^PI||DUPONT^MARIE||19700101|F\r"
)
ACK = b"MSH|^~\\&|OPENSEGUR|CHU-X|GAM|CHU-X|20240306111155||ACK|A1|P|2.5\rMSA|AA|C1\r"


@pytest.fixture(scope="module")
def demo() -> HospitalConfig:
    return demo_config()


def with_senders(hospital: HospitalConfig, *senders: list[str]) -> HospitalConfig:
    dpis = [
        DpiConfig.model_validate({"name": f"DPI {i}", "site": hospital.sites[0].finess, "senders": addresses})
        for i, addresses in enumerate(senders)
    ]
    return hospital.model_copy(update={"dpis": dpis})


def constant(hospital: HospitalConfig | None) -> Callable[[], HospitalConfig | None]:
    return lambda: hospital


class Received:
    def __init__(self) -> None:
        self.messages: list[bytes] = []

    async def __call__(self, raw: bytes) -> bytes:
        self.messages.append(raw)
        return ACK


Listener = Callable[[Callable[[str], bool]], Awaitable[tuple[MllpServer, Received]]]


@pytest.fixture
async def listener() -> AsyncIterator[Listener]:
    servers: list[MllpServer] = []

    async def start(allow: Callable[[str], bool]) -> tuple[MllpServer, Received]:
        received = Received()
        server = MllpServer(received, "127.0.0.1", 0, allow_peer=allow)
        await server.start()
        servers.append(server)
        return server, received

    yield start
    for server in servers:
        await server.stop()


async def send_from(source: str, port: int, payload: bytes = MESSAGE) -> bytes | None:
    """One message from ``source`` (a loopback address of this host): the ACK, or None when closed unanswered."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    try:
        writer.write(frame(payload))
        await writer.drain()
        return await asyncio.wait_for(read_frame(reader, 1 << 20), 5)
    except ConnectionError:
        return None
    finally:
        writer.close()


def test_networks_are_the_union_of_every_dpi_senders(demo: HospitalConfig) -> None:
    hospital = with_senders(demo, ["10.1.2.3"], ["10.20.0.0/16", "10.1.2.3"], [])
    assert [str(n) for n in sender_networks(hospital)] == ["10.1.2.3/32", "10.20.0.0/16"]
    allow = SenderAllowlist(lambda: hospital)
    assert allow("10.1.2.3") and allow("10.20.255.1")
    assert not allow("10.1.2.4") and not allow("127.0.0.1") and not allow("::1")
    assert not allow("pas-une-adresse")


def test_the_demo_ght_allows_its_loopback_senders(demo: HospitalConfig) -> None:
    allow = SenderAllowlist(lambda: demo)
    assert allow("127.0.0.1")
    assert not allow("127.0.0.2") and not allow("192.168.1.10")


def test_without_declared_senders_only_loopback_and_a_warning(
    demo: HospitalConfig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="opensegur.flows.senders")
    for hospital in (None, with_senders(demo, [], [])):
        allow = SenderAllowlist(constant(hospital))
        assert allow.networks is LOOPBACK
        assert allow("127.0.0.1") and allow("127.0.0.2") and allow("::1")
        assert not allow("10.0.0.1")
        allow("127.0.0.1")  # the same configuration: no new warning
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2 and all("senders dans dpis.toml" in w for w in warnings)


def test_a_reloaded_configuration_applies_to_the_next_connection(demo: HospitalConfig) -> None:
    current = [with_senders(demo, ["10.0.0.1"])]
    allow = SenderAllowlist(lambda: current[0])
    assert allow("10.0.0.1") and not allow("10.0.0.2")
    current[0] = with_senders(demo, ["10.0.0.2"])  # what SIGHUP does: Runtime.hospital replaced
    assert allow("10.0.0.2") and not allow("10.0.0.1")


def test_peer_address_normalises_ipv4_mapped_and_scoped_addresses() -> None:
    assert peer_address(("127.0.0.1", 5000)) == "127.0.0.1"
    assert peer_address(("::ffff:10.1.2.3", 5000, 0, 0)) == "10.1.2.3"
    assert peer_address(("fe80::1%eth0", 5000, 0, 2)) == "fe80::1"
    assert peer_address(None) is None and peer_address("/tmp/socket") is None


async def test_declared_sender_gets_its_ack(listener: Listener, demo: HospitalConfig) -> None:
    server, received = await listener(SenderAllowlist(lambda: demo))
    assert await send_message("127.0.0.1", server.port, MESSAGE) == ACK
    assert received.messages == [MESSAGE] and not server.refused


async def test_undeclared_sender_is_closed_unread_logged_and_counted(
    listener: Listener, demo: HospitalConfig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server, received = await listener(SenderAllowlist(lambda: demo))
    assert await send_from("127.0.0.2", server.port) is None
    assert received.messages == []
    assert server.refused == {"adresse": 1}
    refusals = [r for r in caplog.records if r.name == "opensegur.transport.mllp"]
    assert [r.levelno for r in refusals] == [logging.WARNING]
    text = refusals[0].getMessage()
    assert "127.0.0.2" in text and "refusée" in text and "senders de dpis.toml" in text
    assert "DUPONT" not in caplog.text and "MARIE" not in caplog.text
    # The declared loopback sender still gets through, on the same listener.
    assert await send_from("127.0.0.1", server.port) == ACK


async def test_reload_opens_the_listener_to_a_new_sender(listener: Listener, demo: HospitalConfig) -> None:
    current = [demo]
    server, received = await listener(SenderAllowlist(lambda: current[0]))
    assert await send_from("127.0.0.2", server.port) is None
    current[0] = with_senders(demo, ["127.0.0.1", "127.0.0.2"])
    assert await send_from("127.0.0.2", server.port) == ACK
    assert len(received.messages) == 1 and server.refused == {"adresse": 1}
