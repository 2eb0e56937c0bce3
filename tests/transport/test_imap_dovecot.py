"""IMAP transport and the ImapMailboxReader connector against a real Dovecot started for each test."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from opensegur.connectors.mss_imap import ImapMailboxReader, OversizedMail
from opensegur.flows.mssante_ports import MailUnavailableError
from opensegur.security.pki import TestPki, ensure_test_pki
from opensegur.transport.imap import ImapSession, ImapSettings
from tests.transport.dovecot import DovecotServer, dovecot_server, running_dovecot

__all__ = ["dovecot_server"]  # the fixture, imported for pytest

BAL = "bal.cardio@ch-test.mssante.fr"
PASSWORD = "mot-de-passe-de-test"
# What Dovecot 2.3 announces after login, minus IDLE and MOVE: a plainer server.
NO_IDLE_NO_MOVE = (
    "IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE LITERAL+ SORT THREAD=REFERENCES MULTIAPPEND UNSELECT"
    " CHILDREN NAMESPACE UIDPLUS LIST-EXTENDED I18NLEVEL=1 CONDSTORE QRESYNC ESEARCH SEARCHRES"
)


def mail(n: int, body: bytes = b"Bonjour.\r\n") -> bytes:
    return (
        f"From: medecin{n}@test.mssante.fr\r\nTo: {BAL}\r\nSubject: XDM/1.0/DDM+Compte rendu {n}\r\n"
        f"Message-ID: <m{n}@test.mssante.fr>\r\n\r\n"
    ).encode() + body


@pytest.fixture
def server(dovecot_server: DovecotServer) -> DovecotServer:
    dovecot_server.add_mailbox(BAL, PASSWORD)
    return dovecot_server


def reader_for(server: DovecotServer, **kwargs: object) -> ImapMailboxReader:
    options: dict[str, object] = {"security": "plain", "credentials": {BAL: PASSWORD}, "timeout": 10.0}
    options.update(kwargs)
    return ImapMailboxReader(server.host, server.port, **options)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------ reading


async def test_fetch_new_returns_unread_mail_without_marking_it(server: DovecotServer) -> None:
    uids = [server.deliver(BAL, mail(n)) for n in (1, 2)]
    server.deliver(BAL, mail(3), flags=[b"\\Seen"])  # already read by someone: not new
    reader = reader_for(server)
    try:
        got = await reader.fetch_new(BAL, limit=10)
    finally:
        await reader.close()

    assert [m.uid for m in got] == uids
    assert [m.raw for m in got] == [mail(1), mail(2)]
    assert all(m.mailbox == BAL and not isinstance(m, OversizedMail) for m in got)
    assert all(b"\\Seen" not in flags for uid, flags in server.flags(BAL).items() if uid in uids)


async def test_fetch_new_respects_the_limit_in_uid_order(server: DovecotServer) -> None:
    uids = [server.deliver(BAL, mail(n)) for n in range(5)]
    reader = reader_for(server)
    try:
        assert [m.uid for m in await reader.fetch_new(BAL, limit=2)] == uids[:2]
    finally:
        await reader.close()


async def test_oversized_mail_comes_back_as_headers_only(server: DovecotServer) -> None:
    small = server.deliver(BAL, mail(1))
    big_raw = mail(2, b"A" * 200_000 + b"\r\n")
    big = server.deliver(BAL, big_raw)
    reader = reader_for(server, max_message_bytes=100_000)
    try:
        got = {m.uid: m for m in await reader.fetch_new(BAL, limit=10)}
    finally:
        await reader.close()

    assert got[small].raw == mail(1)
    oversized = got[big]
    assert isinstance(oversized, OversizedMail)
    assert oversized.size == len(big_raw)
    assert oversized.raw == mail(2, b"")  # the header block, blank line included, and nothing of the body
    assert b"\\Seen" not in server.flags(BAL)[big]


async def test_mark_done_moves_to_processed_folder_and_flags_seen(server: DovecotServer) -> None:
    uids = [server.deliver(BAL, mail(n)) for n in (1, 2, 3)]
    reader = reader_for(server)
    try:
        got = await reader.fetch_new(BAL, limit=10)
        await reader.mark_done(BAL, [m.uid for m in got[:2]])
        remaining = await reader.fetch_new(BAL, limit=10)
    finally:
        await reader.close()

    assert [m.uid for m in remaining] == [uids[2]]
    assert server.folder_uids(BAL, "INBOX") == [uids[2]]
    processed = server.flags(BAL, "OpenSegur.Traites")  # Dovecot's Maildir++ delimiter is "."
    assert len(processed) == 2 and all(b"\\Seen" in flags for flags in processed.values())


async def test_fetched_but_not_marked_done_is_read_again_after_reconnect(server: DovecotServer) -> None:
    uid = server.deliver(BAL, mail(1))
    first = reader_for(server)
    try:
        assert [m.uid for m in await first.fetch_new(BAL, limit=10)] == [uid]
    finally:
        await first.close()  # e.g. a crash before the mail was committed in our store

    second = reader_for(server)
    try:
        again = await second.fetch_new(BAL, limit=10)
        assert [(m.uid, m.raw) for m in again] == [(uid, mail(1))]
        await second.mark_done(BAL, [uid])
        assert await second.fetch_new(BAL, limit=10) == []
    finally:
        await second.close()


async def test_dead_kept_connection_is_reopened_transparently(server: DovecotServer) -> None:
    server.deliver(BAL, mail(1))
    reader = reader_for(server)
    try:
        assert len(await reader.fetch_new(BAL, limit=10)) == 1
        reader._boxes[BAL].session.interrupt()  # the server dropped us while idle between two polls
        server.deliver(BAL, mail(2))
        assert len(await reader.fetch_new(BAL, limit=10)) == 2
    finally:
        await reader.close()


async def test_wrong_password_is_a_clear_error(server: DovecotServer) -> None:
    reader = reader_for(server, credentials={BAL: "pas-le-bon"})
    with pytest.raises(MailUnavailableError) as info:
        await reader.fetch_new(BAL, limit=10)
    assert "Authentification IMAP refusée" in str(info.value) and BAL in str(info.value)
    assert "pas-le-bon" not in str(info.value)


async def test_mailbox_without_credentials_is_a_clear_error(server: DovecotServer) -> None:
    reader = reader_for(server)
    with pytest.raises(MailUnavailableError, match="Aucun identifiant IMAP"):
        await reader.fetch_new("autre@ch-test.mssante.fr", limit=10)


async def test_server_down_is_unavailable(server: DovecotServer) -> None:
    reader = reader_for(server)
    server.stop()
    with pytest.raises(MailUnavailableError, match="injoignable"):
        await reader.fetch_new(BAL, limit=10)


# ------------------------------------------------------------------------------------------------ waiting


async def test_idle_is_woken_by_a_delivered_message(server: DovecotServer) -> None:
    reader = reader_for(server)
    try:
        assert await reader.fetch_new(BAL, limit=10) == []
        started = time.monotonic()
        waiting = asyncio.create_task(reader.wait_for_news(BAL, timeout=20))
        await asyncio.sleep(0.5)
        assert not waiting.done()
        await asyncio.to_thread(server.deliver, BAL, mail(1))
        assert await asyncio.wait_for(waiting, 15) is True
        assert time.monotonic() - started < 10  # woken by IDLE, not by the timeout
        assert [m.raw for m in await reader.fetch_new(BAL, limit=10)] == [mail(1)]
    finally:
        await reader.close()


async def test_wait_for_news_times_out_without_mail_and_ignores_pending_ones(server: DovecotServer) -> None:
    server.deliver(BAL, mail(1))
    reader = reader_for(server)
    try:
        assert len(await reader.fetch_new(BAL, limit=10)) == 1  # fetched, not yet done: not news
        started = time.monotonic()
        assert await reader.wait_for_news(BAL, timeout=0.5) is False
        assert time.monotonic() - started < 5
    finally:
        await reader.close()


async def test_wait_for_news_returns_at_once_when_mail_is_already_there(server: DovecotServer) -> None:
    server.deliver(BAL, mail(1))
    reader = reader_for(server)
    try:
        assert await reader.wait_for_news(BAL, timeout=30) is True
    finally:
        await reader.close()


async def test_close_breaks_a_running_idle(server: DovecotServer) -> None:
    reader = reader_for(server)
    assert await reader.fetch_new(BAL, limit=10) == []
    waiting = asyncio.create_task(reader.wait_for_news(BAL, timeout=60))
    await asyncio.sleep(0.5)
    started = time.monotonic()
    await reader.close()
    with pytest.raises(MailUnavailableError):
        await asyncio.wait_for(waiting, 10)
    assert time.monotonic() - started < 10


# ------------------------------------------------------------------------------- a server without IDLE/MOVE


@pytest.fixture
def plain_server() -> Iterator[DovecotServer]:
    with running_dovecot(capabilities=NO_IDLE_NO_MOVE) as server:
        server.add_mailbox(BAL, PASSWORD)
        yield server


async def test_without_move_mark_done_only_flags(plain_server: DovecotServer) -> None:
    uid = plain_server.deliver(BAL, mail(1))
    reader = reader_for(plain_server)
    try:
        [got] = await reader.fetch_new(BAL, limit=10)
        await reader.mark_done(BAL, [got.uid])
        assert await reader.fetch_new(BAL, limit=10) == []
    finally:
        await reader.close()
    assert b"\\Seen" in plain_server.flags(BAL)[uid]
    assert plain_server.folder_uids(BAL, "OpenSegur.Traites") == []


async def test_without_idle_wait_for_news_polls(plain_server: DovecotServer) -> None:
    reader = reader_for(plain_server, poll_interval=0.2)
    try:
        assert await reader.fetch_new(BAL, limit=10) == []
        waiting = asyncio.create_task(reader.wait_for_news(BAL, timeout=20))
        await asyncio.sleep(0.3)
        await asyncio.to_thread(plain_server.deliver, BAL, mail(1))
        assert await asyncio.wait_for(waiting, 15) is True
    finally:
        await reader.close()


# ------------------------------------------------------------------------------------------------ TLS


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return ensure_test_pki(tmp_path_factory.mktemp("pki"))


@pytest.mark.parametrize("security", ["tls", "starttls"])
async def test_tls_modes_against_dovecot(pki: TestPki, security: str) -> None:
    with running_dovecot(tls=pki) as server:
        server.add_mailbox(BAL, PASSWORD)
        uid = server.deliver(BAL, mail(1))
        port = server.tls_port if security == "tls" else server.port
        reader = ImapMailboxReader(
            "localhost",
            port,
            security=security,  # type: ignore[arg-type]
            credentials={BAL: PASSWORD},
            ca=pki.ca_cert,
            client_cert=pki.client_cert,
            client_key=pki.client_key,
            timeout=10.0,
        )
        try:
            assert [m.uid for m in await reader.fetch_new(BAL, limit=10)] == [uid]
        finally:
            await reader.close()


async def test_starttls_not_offered_is_never_downgraded(server: DovecotServer, pki: TestPki) -> None:
    reader = ImapMailboxReader(
        "localhost", server.port, security="starttls", credentials={BAL: PASSWORD}, ca=pki.ca_cert, timeout=5
    )
    with pytest.raises(MailUnavailableError, match="STARTTLS"):
        await reader.fetch_new(BAL, limit=10)


async def test_tls_with_an_untrusted_server_certificate_fails(
    pki: TestPki, tmp_path_factory: pytest.TempPathFactory
) -> None:
    other = ensure_test_pki(tmp_path_factory.mktemp("other-pki"))
    with running_dovecot(tls=pki) as server:
        server.add_mailbox(BAL, PASSWORD)
        reader = ImapMailboxReader(
            "localhost", server.tls_port, security="tls", credentials={BAL: PASSWORD}, ca=other.ca_cert
        )
        with pytest.raises(MailUnavailableError, match="TLS"):
            await reader.fetch_new(BAL, limit=10)


# ------------------------------------------------------------------------------------------------ transport


def test_session_search_since_uid_ignores_the_star_quirk(server: DovecotServer) -> None:
    uids = [server.deliver(BAL, mail(n)) for n in (1, 2)]
    session = ImapSession(ImapSettings(server.host, server.port, "plain"), BAL, PASSWORD)
    session.open()
    try:
        assert session.search_new(since_uid=uids[0]) == [uids[1]]
        assert session.search_new(since_uid=uids[1]) == []  # "3:*" matches the last message, filtered out
        assert session.uidvalidity is not None
        assert session.supports_idle and session.supports_move
    finally:
        session.close()
    assert not session.is_open
