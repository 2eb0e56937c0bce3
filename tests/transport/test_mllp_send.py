"""`opensegur send`: the operator's MLLP sender against a real MllpServer."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from opensegur.cli import main
from opensegur.transactions.hl7v2 import Hl7Error, build_ack, parse
from opensegur.transport.mllp import MllpServer
from opensegur.transport.mllp_send import read_ack, send_files, split_messages
from tests.ports import free_port

ADT = (
    "MSH|^~\\&|GAM|CHU-X|DPI|CHU-X|20240306111154||ADT^A01^ADT_A01|{id}|P|2.5^FRA^2.11|||||FRA|UNICODE UTF-8\n"
    "EVN||20240306111154\n"
    "PID|1||000003^^^CHU-X&000897406&N^PI||PAT-TROIS^DOMINIQUE^^^^^L||19790328|F\n"
)


class Listener:
    """A real MllpServer answering AA, or AE with an ERR for the messages whose control id starts with "E"."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.server = MllpServer(self.handle, "127.0.0.1", 0)

    async def handle(self, payload: bytes) -> bytes:
        self.received.append(payload)
        _message, header = parse(payload)
        if header.control_id.startswith("E"):
            error = Hl7Error("204", "Patient inconnu du domaine d'identification", location="PID^1^3")
            return build_ack(header, "AE", [error])
        return build_ack(header, "AA")


@pytest.fixture
async def listener() -> AsyncIterator[Listener]:
    server = Listener()
    await server.server.start()
    yield server
    await server.server.stop(timeout=5)


def write(tmp_path: Path, name: str, text: str, newline: str = "\n") -> Path:
    path = tmp_path / name
    path.write_bytes(text.replace("\n", newline).encode())
    return path


async def send(paths: list[Path], port: int, timeout: float = 5) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = await send_files(paths, "127.0.0.1", port, timeout, out, err)
    return status, out.getvalue(), err.getvalue()


async def test_accepted_message_exits_0_and_is_sent_with_cr(listener: Listener, tmp_path: Path) -> None:
    path = write(tmp_path, "adt.er7", ADT.format(id="1001"))
    status, out, err = await send([path], listener.server.port)
    assert (status, err) == (0, "")
    assert "adt.er7 (MSH-10 1001) : AA (acceptée)" in out
    assert listener.received[0].count(b"\r") == 3 and b"\n" not in listener.received[0]


async def test_error_ack_exits_1_and_shows_err(listener: Listener, tmp_path: Path) -> None:
    path = write(tmp_path, "adt.er7", ADT.format(id="E1"), newline="\r\n")
    status, out, _err = await send([path], listener.server.port)
    assert status == 1
    assert ": AE (erreur)" in out
    assert "ERR 204 [PID^1^3] Patient inconnu du domaine d'identification" in out


async def test_file_with_two_messages_gets_two_acks(listener: Listener, tmp_path: Path) -> None:
    # The second message follows the first without a blank line; CR-only separators as a DPI writes them.
    path = write(tmp_path, "lot.hl7", ADT.format(id="2001") + ADT.format(id="2002") + "\n", newline="\r")
    status, out, _err = await send([path], listener.server.port)
    assert status == 0
    assert "lot.hl7 [1/2] (MSH-10 2001) : AA" in out
    assert "lot.hl7 [2/2] (MSH-10 2002) : AA" in out
    assert len(listener.received) == 2


async def test_blank_line_separates_messages_and_one_error_fails_the_run(
    listener: Listener, tmp_path: Path
) -> None:
    first = write(tmp_path, "a.er7", ADT.format(id="3001") + "\n\n" + ADT.format(id="E3002"))
    second = write(tmp_path, "b.er7", ADT.format(id="3003"))
    status, out, _err = await send([first, second], listener.server.port)
    assert status == 1
    assert [line.split(" : ")[1][:2] for line in out.splitlines() if " : " in line] == ["AA", "AE", "AA"]


async def test_refused_connection_exits_2(tmp_path: Path) -> None:
    path = write(tmp_path, "adt.er7", ADT.format(id="4001"))
    status, out, err = await send([path], free_port())
    assert status == 2
    assert out == ""
    assert err.startswith("Connexion impossible à 127.0.0.1:") and "connexion refusée" in err


async def test_silent_listener_exits_1(tmp_path: Path) -> None:
    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        path = write(tmp_path, "adt.er7", ADT.format(id="5001"))
        status, out, _err = await send([path], port, timeout=0.3)
    finally:
        server.close()
    assert status == 1
    assert "aucun accusé de réception" in out


async def test_unreadable_input_exits_2_before_sending(listener: Listener, tmp_path: Path) -> None:
    not_hl7 = write(tmp_path, "notes.txt", "bonjour\n")
    status, _out, err = await send([tmp_path / "absent.er7"], listener.server.port)
    assert status == 2 and "Impossible de lire" in err
    status, _out, err = await send([not_hl7], listener.server.port)
    assert status == 2 and "commence par MSH" in err
    assert listener.received == []


def test_split_messages_accepts_every_line_ending() -> None:
    for newline in ("\n", "\r\n", "\r"):
        raw = (ADT.format(id="1") + "\n" + ADT.format(id="2")).replace("\n", newline).encode()
        messages = split_messages(b"\xef\xbb\xbf" + raw)
        assert len(messages) == 2
        assert all(m.startswith(b"MSH|") and m.endswith(b"\r") and b"\n" not in m for m in messages)


def test_read_ack_unescapes_msa_3() -> None:
    ack = read_ack(b"MSH|^~\\&|A|B|C|D|20240101||ACK|1|P|2.5\rMSA|AR|9|Champ \\F\\ invalide\r")
    assert (ack.code, ack.text, ack.accepted) == ("AR", "Champ | invalide", False)


def test_command_line_exit_status(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "adt.er7", ADT.format(id="6001"))
    assert main(["send", str(path), "--port", str(free_port()), "--timeout", "2"]) == 2
    assert "Connexion impossible" in capsys.readouterr().err
