"""``opensegur send FILE…``: an operator's MLLP sender, to try the platform or replay a DPI's messages without nc.

A file holds one message or several, one after the other: a new message starts at each MSH segment or after a
blank line. Segments may end with \\n, \\r\\n or \\r; they are sent ending with \\r as HL7 requires. The bytes
are sent as they are in the file (no re-encoding: MSH-18 says what they are).

Messages go in order on one connection, as a DPI sends them. Exit status: 0 when every message got an AA or
CA, 1 when one got an error or rejection or no acknowledgement at all, 2 when the listener cannot be reached or a
file cannot be read (nothing is sent then).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from opensegur.config import Settings
from opensegur.errors import OpenSegurError
from opensegur.transactions.hl7v2 import Hl7Error, decode
from opensegur.transactions.hl7v2_message import get_field, read_message, segments
from opensegur.transport.mllp import DEFAULT_MAX_BYTES, MllpFramingError, frame, read_frame

__all__ = ["Ack", "read_ack", "register", "run", "send_files", "split_messages"]

DEFAULT_HOST = "127.0.0.1"
_LINE_END = re.compile(rb"\r\n|\n|\r")
_CODE_LABELS = {
    "AA": "acceptée",
    "AE": "erreur",
    "AR": "refusée",
    "CA": "reçue",
    "CE": "erreur à la réception",
    "CR": "refusée à la réception",
}
_ACCEPTED = ("AA", "CA")


class InputError(OpenSegurError):
    """A file that cannot be sent; the message is for the operator, in French."""


@dataclass(frozen=True)
class Ack:
    code: str  # MSA-1
    text: str  # MSA-3
    errors: tuple[str, ...]  # one readable line per ERR segment

    @property
    def accepted(self) -> bool:
        return self.code in _ACCEPTED


def split_messages(raw: bytes) -> list[bytes]:
    """The messages of a file, each as segments ending with \\r."""
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    messages: list[list[bytes]] = []
    current: list[bytes] | None = None
    for line in _LINE_END.split(raw):
        if not line.strip():
            current = None
            continue
        if line.startswith(b"MSH"):
            current = [line]
            messages.append(current)
        elif current is None:
            raise InputError(f"segment hors d'un message (chaque message commence par MSH) : {line[:20]!r}")
        else:
            current.append(line)
    return [b"".join(segment + b"\r" for segment in message) for message in messages]


def _control_id(message: bytes) -> str:
    msh = message.split(b"\r", 1)[0]
    separator = msh[3:4]
    fields = msh.split(separator) if separator else []
    # fields[0] is "MSH" and fields[1] the encoding characters, so MSH-10 is fields[9].
    return fields[9].decode("latin-1") if len(fields) > 9 else ""


def read_ack(payload: bytes) -> Ack:
    """MSA-1, MSA-3 and the ERR segments of an acknowledgement, unescaped."""
    try:
        text = decode(payload)
    except Hl7Error:
        text = payload.decode("latin-1").replace("\r\n", "\r").replace("\n", "\r").strip()
    if not text.startswith("MSH") or len(text) < 8:
        return Ack("", "", ("réponse illisible (pas de segment MSH en tête)",))
    message = read_message(text)
    msa = segments(message, "MSA")
    if not msa:
        return Ack("", "", ("réponse sans segment MSA",))
    errors = []
    for err in segments(message, "ERR"):
        code = get_field(err, 3, 1, 1)
        label = get_field(err, 3, 1, 2)
        location = "^".join(part for part in (get_field(err, 2, 1, c) for c in (1, 2, 3, 4)) if part)
        detail = get_field(err, 8) or label
        line = " ".join(part for part in (code, f"[{location}]" if location else "", detail) if part)
        errors.append(line or "erreur sans détail")
    return Ack(get_field(msa[0], 1), get_field(msa[0], 3), tuple(errors))


def _connection_failure(exc: OSError) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connexion refusée (aucun écouteur MLLP sur ce port ?)"
    if isinstance(exc, socket.gaierror):
        return "nom d'hôte inconnu"
    if isinstance(exc, TimeoutError):
        return "délai dépassé"
    return exc.strerror or str(exc)


class _Link:
    """One MLLP connection, opened on first use and again after a peer that stopped answering."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def exchange(self, message: bytes) -> bytes | None:
        """The acknowledgement's payload, None when none came; OSError when the listener cannot be reached."""
        if self._streams is None:
            async with asyncio.timeout(self.timeout):
                self._streams = await asyncio.open_connection(self.host, self.port)
        reader, writer = self._streams
        try:
            async with asyncio.timeout(self.timeout):
                writer.write(frame(message))
                await writer.drain()
                reply = await read_frame(reader, DEFAULT_MAX_BYTES)
        except (OSError, TimeoutError, MllpFramingError):
            reply = None
        if reply is None:
            await self.close()
        return reply

    async def close(self) -> None:
        if self._streams is not None:
            writer = self._streams[1]
            self._streams = None
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


async def send_files(
    files: list[Path],
    host: str,
    port: int,
    timeout: float,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Send every message of ``files`` in order, print each acknowledgement, return the exit status."""
    out = out or sys.stdout
    err = err or sys.stderr
    batches: list[tuple[Path, list[bytes]]] = []
    for path in files:
        try:
            messages = split_messages(path.read_bytes())
        except OSError as exc:
            print(f"Impossible de lire {path} : {exc.strerror or exc}", file=err)
            return 2
        except InputError as exc:
            print(f"{path} : {exc}", file=err)
            return 2
        if not messages:
            print(f"{path} : aucun message HL7 (aucun segment MSH)", file=err)
            return 2
        batches.append((path, messages))

    status = 0
    link = _Link(host, port, timeout)
    try:
        for path, messages in batches:
            for index, message in enumerate(messages, start=1):
                where = f"{path.name} [{index}/{len(messages)}]" if len(messages) > 1 else path.name
                control_id = _control_id(message)
                name = f"{where} (MSH-10 {control_id})" if control_id else where
                try:
                    reply = await link.exchange(message)
                except (OSError, TimeoutError) as exc:
                    print(f"Connexion impossible à {host}:{port} : {_connection_failure(exc)}", file=err)
                    return 2
                if reply is None:
                    print(
                        f"{name} : aucun accusé de réception (connexion fermée ou délai de {timeout:g} s dépassé)",
                        file=out,
                    )
                    status = 1
                    continue
                ack = read_ack(reply)
                label = _CODE_LABELS.get(ack.code, "code inconnu")
                line = f"{name} : {ack.code or '—'} ({label})"
                print(f"{line} — {ack.text}" if ack.text else line, file=out)
                for error in ack.errors:
                    print(f"    ERR {error}", file=out)
                if not ack.accepted:
                    status = 1
    finally:
        await link.close()
    return status


def run(args: argparse.Namespace) -> int:
    port = args.target_port if args.target_port is not None else Settings().mllp_port
    return asyncio.run(send_files(args.files, args.target_host, port, args.timeout))


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds ``send`` to the command line; the parsed arguments carry ``handler``."""
    send = sub.add_parser(
        "send",
        help="send HL7 v2 messages over MLLP and print their acknowledgements",
        description="Envoie des messages HL7 v2 (fichiers .er7, .hl7) en MLLP et affiche chaque accusé.",
    )
    send.add_argument("files", nargs="+", type=Path, metavar="FILE")
    send.add_argument(
        "--host", dest="target_host", metavar="H", default=DEFAULT_HOST, help="default: 127.0.0.1"
    )
    send.add_argument(
        "--port",
        dest="target_port",
        metavar="P",
        type=int,
        help="default: mllp_port of the configuration (2575)",
    )
    send.add_argument(
        "--timeout", metavar="S", type=float, default=10.0, help="seconds to wait for each ACK (default 10)"
    )
    send.set_defaults(handler=run)
