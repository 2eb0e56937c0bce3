"""IMAP4rev1 grammar for the sandbox IMAP server: pure functions, no I/O and no session state.

Tokenizing a command (atoms, quoted strings, literals, parenthesised lists), astrings, quoting, sequence sets and
UID sets, dates and date-times, header fields and the ENVELOPE of a message (RFC 3501 §9, §7.4.2). A malformed
argument raises :class:`BadCommand`, which the server answers ``BAD``.
"""

from __future__ import annotations

import bisect
import contextlib
import re
from collections.abc import Sequence
from datetime import date, datetime, timedelta, timezone
from email import policy
from email.parser import BytesHeaderParser
from email.utils import getaddresses
from typing import Any

from opensegur.errors import OpenSegurError

__all__ = [
    "BadCommand",
    "SequenceSet",
    "Token",
    "ascii_text",
    "astring",
    "envelope",
    "header_fields",
    "imap_date",
    "internal_date_text",
    "nstring",
    "parse_date_time",
    "quote",
    "split_message",
    "tokenize",
    "uid_set_text",
]

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


class BadCommand(OpenSegurError):
    """The command is malformed: answered ``BAD`` with this (ASCII) text."""


_DATE_TIME_RE = re.compile(
    r"^ ?(\d{1,2})-([A-Za-z]{3})-(\d{4}) (\d{2}):(\d{2}):(\d{2}) ([+-])(\d{2})(\d{2})$"
)
_ATOM_SPECIALS = set('(){ %*"\\]') | {chr(c) for c in range(0, 32)} | {chr(127)}

Token = str | bytes | list[Any]


def tokenize(pieces: list[bytes]) -> list[Token]:
    """Tokens of a command: ``str`` atoms, ``bytes`` strings (quoted or literal), nested lists for ``(…)``.

    ``pieces`` alternates text and literal contents: text, literal, text, literal, text.
    """
    flat: list[Any] = []
    for index, piece in enumerate(pieces):
        if index % 2:
            flat.append(piece)
            continue
        text = piece.decode("latin-1")
        i, n = 0, len(text)
        while i < n:
            c = text[i]
            if c == " ":
                i += 1
            elif c in "()":
                flat.append(c)
                i += 1
            elif c == '"':
                out = []
                i += 1
                while True:
                    if i >= n:
                        raise BadCommand("Chaine entre guillemets non terminee (unterminated quoted string)")
                    c = text[i]
                    if c == "\\" and i + 1 < n:
                        out.append(text[i + 1])
                        i += 2
                    elif c == '"':
                        i += 1
                        break
                    elif c in "\r\n":
                        raise BadCommand("Fin de ligne dans une chaine (line break in quoted string)")
                    else:
                        out.append(c)
                        i += 1
                flat.append("".join(out).encode("latin-1"))
            else:
                start = i
                while i < n and text[i] not in ' ()"':
                    if text[i] == "[":
                        end = text.find("]", i)
                        if end < 0:
                            raise BadCommand("Crochet non ferme (unbalanced brackets)")
                        i = end + 1
                    else:
                        i += 1
                atom = text[start:i]
                if not atom.isascii() or any(ch < " " or ch == "\x7f" for ch in atom):
                    raise BadCommand("Caracteres invalides (invalid characters)")
                flat.append(_AtomToken(atom))
    root: list[Any] = []
    stack = [root]
    for tok in flat:
        if tok == "(" and not isinstance(tok, _AtomToken):
            new: list[Any] = []
            stack[-1].append(new)
            stack.append(new)
            if len(stack) > 16:
                raise BadCommand("Parentheses trop imbriquees (nesting too deep)")
        elif tok == ")" and not isinstance(tok, _AtomToken):
            if len(stack) == 1:
                raise BadCommand("Parenthese fermante en trop (unbalanced parentheses)")
            stack.pop()
        else:
            stack[-1].append(str(tok) if isinstance(tok, _AtomToken) else tok)
    if len(stack) != 1:
        raise BadCommand("Parenthese non fermee (unbalanced parentheses)")
    return root


class _AtomToken(str):
    """An atom while tokenizing, so that an atom spelled ``(`` cannot be mistaken for a parenthesis."""


def astring(tok: Token, what: str) -> str:
    if isinstance(tok, bytes):
        try:
            return tok.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadCommand(f"{what} : UTF-8 invalide") from exc
    if isinstance(tok, str) and not any(c in _ATOM_SPECIALS for c in tok.replace("]", "")):
        return tok
    raise BadCommand(f"{what} attendu (string expected)")


def quote(value: str | bytes) -> bytes:
    data = value.encode("utf-8") if isinstance(value, str) else value
    if all(32 <= b < 127 and b not in (34, 92) for b in data):
        return b'"' + data + b'"'
    return b"{%d}\r\n" % len(data) + data


def nstring(value: str | bytes | None) -> bytes:
    return b"NIL" if value is None else quote(value)


class SequenceSet:
    """``1:4,7,9:*``; ranges are kept as merged bounds so ``1:4294967295`` or a long UID list cost little."""

    def __init__(self, text: str, star: int) -> None:
        if not text:
            raise BadCommand("Ensemble de sequence invalide (bad sequence set)")
        ranges: list[tuple[int, int]] = []
        for part in text.split(","):
            bounds = part.split(":")
            if len(bounds) > 2:
                raise BadCommand("Ensemble de sequence invalide (bad sequence set)")
            values = []
            for b in bounds:
                if b == "*":
                    values.append(star)
                elif b.isdigit() and 0 < int(b) < 2**32:
                    values.append(int(b))
                else:
                    raise BadCommand("Ensemble de sequence invalide (bad sequence set)")
            ranges.append((min(values), max(values)))
        merged: list[tuple[int, int]] = []
        for lo, hi in sorted(ranges):
            if merged and lo <= merged[-1][1] + 1:
                merged[-1] = (merged[-1][0], max(hi, merged[-1][1]))
            else:
                merged.append((lo, hi))
        self._starts = [lo for lo, _ in merged]
        self._ranges = merged

    def __contains__(self, n: int) -> bool:
        index = bisect.bisect_right(self._starts, n) - 1
        return index >= 0 and n <= self._ranges[index][1]


def uid_set_text(uids: Sequence[int]) -> str:
    parts: list[str] = []
    start = prev = None
    for u in sorted(uids):
        if start is None:
            start = prev = u
        elif prev is not None and u == prev + 1:
            prev = u
        else:
            parts.append(f"{start}" if start == prev else f"{start}:{prev}")
            start = prev = u
    if start is not None:
        parts.append(f"{start}" if start == prev else f"{start}:{prev}")
    return ",".join(parts)


def imap_date(value: Token) -> date:
    text = astring(value, "Date")
    parts = text.split("-")
    if len(parts) == 3 and parts[0].isdigit() and parts[2].isdigit() and parts[1].title() in _MONTHS:
        with contextlib.suppress(ValueError):
            return date(int(parts[2]), _MONTHS.index(parts[1].title()) + 1, int(parts[0]))
    raise BadCommand("Date invalide, format attendu 1-Feb-2024 (bad date)")


def internal_date_text(d: datetime) -> str:
    return f"{d.day:02d}-{_MONTHS[d.month - 1]}-{d.year} {d:%H:%M:%S} +0000"


def split_message(raw: bytes) -> tuple[bytes, bytes]:
    for sep in (b"\r\n\r\n", b"\n\n"):
        index = raw.find(sep)
        if index >= 0:
            return raw[: index + len(sep)], raw[index + len(sep) :]
    return raw, b""


def header_fields(header: bytes, names: set[str], exclude: bool) -> bytes:
    out: list[bytes] = []
    keep = False
    for line in header.splitlines(keepends=True):
        if line in (b"\r\n", b"\n"):
            break
        if line[:1] in (b" ", b"\t"):
            if keep:
                out.append(line)
            continue
        name = line.split(b":", 1)[0].strip().decode("latin-1").upper()
        keep = (name in names) != exclude
        if keep:
            out.append(line)
    return b"".join(out) + b"\r\n"


def envelope(header: bytes) -> bytes:
    msg = BytesHeaderParser(policy=policy.compat32).parsebytes(header)

    def field(name: str) -> bytes:
        value = msg.get(name)
        return nstring(" ".join(str(value).split()) if value is not None else None)

    def addresses(*names: str) -> bytes:
        for name in names:
            values = msg.get_all(name)
            if values:
                items = []
                for display, addr in getaddresses([str(v) for v in values]):
                    local, _, host = addr.partition("@")
                    items.append(
                        b"("
                        + b" ".join([nstring(display or None), b"NIL", nstring(local), nstring(host)])
                        + b")"
                    )
                return b"(" + b"".join(items) + b")" if items else b"NIL"
        return b"NIL"

    parts = [
        field("Date"),
        field("Subject"),
        addresses("From"),
        addresses("Sender", "From"),
        addresses("Reply-To", "From"),
        addresses("To"),
        addresses("Cc"),
        addresses("Bcc"),
        field("In-Reply-To"),
        field("Message-ID"),
    ]
    return b"(" + b" ".join(parts) + b")"


def parse_date_time(text: str) -> float:
    found = _DATE_TIME_RE.match(text)
    if found is None or found.group(2).title() not in _MONTHS:
        raise BadCommand("Date invalide, format attendu 17-Jul-1996 02:44:25 -0700 (bad date-time)")
    day, month, year, hh, mm, ss, sign, zh, zm = found.groups()
    offset = (int(zh) * 60 + int(zm)) * (1 if sign == "+" else -1)
    try:
        tz = timezone(timedelta(minutes=offset))
        moment = datetime(
            int(year), _MONTHS.index(month.title()) + 1, int(day), int(hh), int(mm), int(ss), tzinfo=tz
        )
    except ValueError as exc:
        raise BadCommand("Date invalide (bad date-time)") from exc
    return moment.timestamp()


def ascii_text(text: str) -> str:
    return text.encode("ascii", "replace").decode("ascii").replace("\r", " ").replace("\n", " ")
