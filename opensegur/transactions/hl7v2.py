"""Generic HL7 v2 reading and acknowledgement (original acknowledgement mode).

Pure functions: no I/O here, the MLLP transport hands us bytes and sends back what we return.

ACK layout follows the ANS volet "Transmission de document(s) CDA en HL7v2" (profils-messages.md,
"Le message d'acquittement du message HL7v2"):

    MSH|^~\\&|<our app>|<our facility>|<orig MSH-3>|<orig MSH-4>|<now>||ACK^<trigger>^ACK|<id>
        |<MSH-11>|<MSH-12>|||||<MSH-17>|<MSH-18>|<MSH-19>||<MSH-21>
    MSA|AA|<orig MSH-10>
    ERR||MSH^1^12|203^Version HL7 non supportée^HL70357|E||||<user message>

Choices:
- ERR-2 is an ERL (segment^sequence^field[^repetition^component]); ERR-3 is code^text^HL70357 (the ANS
  example writes the symbolic name "messageErrorCondition" as coding system; "HL70357" is the HL7 table-0396
  name and is what generic receivers recognise); ERR-4 severity (table 0516); ERR-5 the optional application
  error code (ANS applicationErrorCondition 900-906, with ERR-3 = 207); ERR-8 a short French user message.
- MSH-12 (the whole VID, e.g. ``2.5^FRA^2.11``), MSH-17/18/19 and MSH-21 are copied from the original message:
  PAM FR declares its profile in MSH-21 for every message of the transaction, receivers ignore it otherwise.
- The ACK reuses the original field separator and encoding characters so that echoed fields (MSH-3/4, MSH-12,
  MSH-21) are copied byte-for-byte without re-escaping.
- A message whose bytes are not valid in the charset declared in MSH-18 is rejected (AR, 102 at MSH^1^18):
  guessing another charset would silently corrupt identity traits (names), and the error is in the envelope,
  like an unsupported version, so no part of the content was interpreted.
"""

from __future__ import annotations

import re
import secrets
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from opensegur.errors import OpenSegurError
from opensegur.transactions.hl7v2_message import (
    Hl7Message,
    get_field,
    raw_field,
    read_message,
)

__all__ = [
    "Hl7Error",
    "MessageHeader",
    "SUPPORTED_VERSIONS",
    "ack_code_for",
    "build_ack",
    "build_nak_for_unparseable",
    "charset_to_codec",
    "decode",
    "parse",
]

SUPPORTED_VERSIONS = frozenset({"2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.7.1", "2.8"})
PROCESSING_IDS = frozenset({"P", "T", "D"})

# Table 0357 labels, written into ERR-3.2 (the French user text goes to ERR-8).
ERROR_LABELS = {
    "0": "Message accepted",
    "100": "Segment sequence error",
    "101": "Required field missing",
    "102": "Data type error",
    "103": "Table value not found",
    "198": "Non-conformant cardinality",
    "199": "Other HL7 Error",
    "200": "Unsupported message type",
    "201": "Unsupported event code",
    "202": "Unsupported processing id",
    "203": "Unsupported version id",
    "204": "Unknown key identifier",
    "205": "Duplicate key identifier",
    "206": "Application record locked",
    "207": "Application internal error",
}

DEFAULT_FIELD_SEPARATOR = "|"
DEFAULT_ENCODING_CHARACTERS = "^~\\&"


class Hl7Error(OpenSegurError):
    """An HL7 error to report in an ERR segment.

    ``location`` uses "^" as component separator, whatever the message uses; build_ack translates it.
    """

    def __init__(
        self,
        code: str,
        message: str,
        *,
        location: str = "",
        severity: str = "E",
        reject: bool = False,
        application_code: str | None = None,
    ) -> None:
        super().__init__(f"{code} {location}: {message}" if location else f"{code}: {message}")
        self.code = code
        self.message = message
        self.location = location
        self.severity = severity
        self.reject = reject
        self.application_code = application_code

    def __repr__(self) -> str:
        return (
            f"Hl7Error(code={self.code!r}, location={self.location!r}, severity={self.severity!r}, "
            f"reject={self.reject!r}, message={self.message!r})"
        )


@dataclass
class MessageHeader:
    """MSH content.

    Fields marked "raw" keep the text exactly as received (escaped, with the message's own delimiters) because
    they are echoed verbatim in the ACK; the other fields are unescaped first components.
    """

    sending_application: str  # raw MSH-3
    sending_facility: str  # raw MSH-4
    receiving_application: str  # raw MSH-5
    receiving_facility: str  # raw MSH-6
    datetime: str  # MSH-7.1
    message_type: str  # MSH-9.1, e.g. "ADT"
    trigger: str  # MSH-9.2, e.g. "A01"
    structure: str  # MSH-9.3, e.g. "ADT_A01" (may be empty before v2.3.1)
    control_id: str  # MSH-10
    processing_id: str  # MSH-11.1
    version: str  # MSH-12.1, e.g. "2.5"
    charset: str  # MSH-18 first repetition, e.g. "UNICODE UTF-8" ("" when absent)
    field_separator: str = DEFAULT_FIELD_SEPARATOR
    encoding_characters: str = DEFAULT_ENCODING_CHARACTERS
    processing_id_raw: str = ""  # raw MSH-11
    version_raw: str = ""  # raw MSH-12, e.g. "2.5^FRA^2.11"
    country: str = ""  # raw MSH-17
    language: str = ""  # raw MSH-19
    profile: str = ""  # raw MSH-21, e.g. "2.11^IHE_FRANCE-2.11-PAM"
    charset_raw: str = ""  # raw MSH-18

    @property
    def component_separator(self) -> str:
        return self.encoding_characters[0]


# --------------------------------------------------------------------------------------------- decoding

_CHARSETS = {
    "ASCII": "ascii",
    "UNICODE UTF-8": "utf-8",
    "UTF-8": "utf-8",  # not in table 0211 but common; harmless to accept
}
_ISO_8859 = re.compile(r"^8859/(\d{1,2})$")


def charset_to_codec(charset: str) -> str | None:
    """Python codec for an MSH-18 value (HL7 table 0211); None when unknown."""
    value = charset.strip().upper()
    if value in _CHARSETS:
        return _CHARSETS[value]
    match = _ISO_8859.match(value)
    if match and 1 <= int(match.group(1)) <= 16 and match.group(1) != "12":
        return f"iso-8859-{int(match.group(1))}"
    return None


def _split_msh(first_line: str) -> tuple[str, str, list[str]] | None:
    """(field separator, encoding characters, fields) of an MSH line, fields[n] = MSH-n (n >= 3).

    Hand-split because this runs on undecoded bytes (latin-1 view) to find MSH-18 before python-hl7 can be
    used, and on messages python-hl7 refused.
    """
    if len(first_line) < 8 or not first_line.startswith("MSH"):
        return None
    fs = first_line[3]
    parts = first_line.split(fs)
    encoding = parts[1] if len(parts) > 1 else ""
    return fs, encoding, ["MSH", fs, *parts[1:]]


def _valid_delimiters(fs: str, encoding: str) -> bool:
    if len(encoding) not in (4, 5):  # 5th char is the v2.7 truncation character
        return False
    chars = fs + encoding
    return len(set(chars)) == len(chars) and not any(c.isalnum() or c.isspace() for c in chars)


def _first_component(raw: str, encoding: str) -> str:
    rep = encoding[1] if len(encoding) > 1 else "~"
    comp = encoding[0] if encoding else "^"
    return raw.split(rep)[0].split(comp)[0]


def decode(raw: bytes) -> str:
    """Bytes to text per MSH-18, line endings normalised to \\r, surrounding whitespace removed.

    Raises Hl7Error (AR) for an unknown MSH-18 (103) or bytes invalid in the declared charset (102).
    """
    raw = raw.lstrip()
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    first_line = re.split(rb"[\r\n]", raw, maxsplit=1)[0].decode("latin-1")
    charset = ""
    split = _split_msh(first_line)
    if split is not None and len(split[2]) > 18:
        charset = _first_component(split[2][18], split[1]).strip()
    if charset:
        codec = charset_to_codec(charset)
        if codec is None:
            raise Hl7Error(
                "103", f"Jeu de caractères MSH-18 inconnu : {charset[:30]}", location="MSH^1^18", reject=True
            )
        try:
            text = raw.decode(codec)
        except UnicodeDecodeError:
            raise Hl7Error(
                "102",
                f"Octets invalides pour le jeu de caractères déclaré ({charset})",
                location="MSH^1^18",
                reject=True,
            ) from None
    else:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("latin-1")
    text = text.replace("\r\n", "\r").replace("\n", "\r")
    # Blank lines would become empty segments, which python-hl7 cannot index. The substring test spares a regex
    # scan of megabytes of base64 in the usual case.
    if "\r\r" in text:
        text = re.sub(r"\r{2,}", "\r", text)
    return text.strip()


# --------------------------------------------------------------------------------------------- parsing


def parse(raw: bytes) -> tuple[Hl7Message, MessageHeader]:
    """Decode and parse one message; validate the MSH. All failures are Hl7Error with reject=True (AR)."""
    text = decode(raw)
    if not text.startswith("MSH"):
        raise Hl7Error("100", "Le message ne commence pas par un segment MSH", location="MSH^1", reject=True)
    split = _split_msh(text.split("\r", 1)[0])
    if split is None or not _valid_delimiters(split[0], split[1]):
        raise Hl7Error("102", "Séparateurs MSH-1/MSH-2 invalides", location="MSH^1^2", reject=True)
    message = read_message(text)
    msh = message[0]

    message_type = get_field(msh, 9, 1, 1)
    trigger = get_field(msh, 9, 1, 2)
    if not message_type or not trigger:
        raise Hl7Error("101", "Type de message (MSH-9) absent ou incomplet", location="MSH^1^9", reject=True)
    control_id = get_field(msh, 10)
    if not control_id:
        raise Hl7Error("101", "Identifiant du message (MSH-10) absent", location="MSH^1^10", reject=True)
    processing_id = get_field(msh, 11, 1, 1)
    if not processing_id:
        raise Hl7Error("101", "Mode de traitement (MSH-11) absent", location="MSH^1^11", reject=True)
    if processing_id not in PROCESSING_IDS:
        raise Hl7Error(
            "202", f"Mode de traitement non supporté : {processing_id[:10]}", location="MSH^1^11", reject=True
        )
    version = get_field(msh, 12, 1, 1)
    if not version:
        raise Hl7Error("101", "Version HL7 (MSH-12) absente", location="MSH^1^12", reject=True)
    if version not in SUPPORTED_VERSIONS:
        raise Hl7Error("203", f"Version HL7 non supportée : {version[:10]}", location="MSH^1^12", reject=True)

    header = MessageHeader(
        sending_application=raw_field(msh, 3),
        sending_facility=raw_field(msh, 4),
        receiving_application=raw_field(msh, 5),
        receiving_facility=raw_field(msh, 6),
        datetime=get_field(msh, 7, 1, 1),
        message_type=message_type,
        trigger=trigger,
        structure=get_field(msh, 9, 1, 3),
        control_id=control_id,
        processing_id=processing_id,
        version=version,
        charset=get_field(msh, 18, 1, 1),
        field_separator=split[0],
        encoding_characters=split[1],
        processing_id_raw=raw_field(msh, 11),
        version_raw=raw_field(msh, 12),
        country=raw_field(msh, 17),
        language=raw_field(msh, 19),
        profile=raw_field(msh, 21),
        charset_raw=raw_field(msh, 18),
    )
    return message, header


# --------------------------------------------------------------------------------------------- ACK


def ack_code_for(errors: Sequence[Hl7Error]) -> str:
    """AR if any error rejects the message, AE if any is an error, else AA (warnings only)."""
    if any(e.reject for e in errors):
        return "AR"
    if any(e.severity == "E" for e in errors):
        return "AE"
    return "AA"


def escape_text(text: str, fs: str = "|", encoding: str = "^~\\&") -> str:
    """HL7 escaping of free text; line breaks become spaces (one segment per line).

    Not python-hl7's escape(): it also hex-escapes every non-ASCII character, which mangles French text.
    """
    comp, rep, esc, sub = encoding[0], encoding[1], encoding[2], encoding[3]
    out = text.replace(esc, f"{esc}E{esc}")
    for char, code in ((fs, "F"), (comp, "S"), (rep, "R"), (sub, "T")):
        out = out.replace(char, f"{esc}{code}{esc}")
    return out.replace("\r", " ").replace("\n", " ")


def format_dtm(value: datetime) -> str:
    """HL7 DTM to the second, with the UTC offset when the datetime is aware."""
    stamp = value.strftime("%Y%m%d%H%M%S")
    return stamp + value.strftime("%z") if value.tzinfo is not None else stamp


def _new_control_id(now: datetime) -> str:
    # 20 chars: the MSH-10 ST length limit in v2.5.
    return now.strftime("%Y%m%d%H%M%S") + f"{secrets.randbelow(10**6):06d}"


def _encode(text: str, charset: str) -> bytes:
    codec = charset_to_codec(charset) if charset else None
    codec = codec or "utf-8"
    try:
        return text.encode(codec)
    except UnicodeEncodeError:
        # e.g. ASCII declared: drop accents rather than emit bytes the sender cannot read.
        stripped = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
        return stripped.encode(codec, errors="replace")


def build_ack(
    header: MessageHeader,
    code: str,
    errors: Sequence[Hl7Error] = (),
    *,
    app: str = "OPENSEGUR",
    facility: str = "OPENSEGUR",
    now: datetime | None = None,
    control_id: str | None = None,
) -> bytes:
    """ACK^<trigger>^ACK for ``header`` with MSA-1 = ``code`` and one ERR per error, encoded in MSH-18."""
    if code not in ("AA", "AE", "AR"):
        raise ValueError(f"unsupported acknowledgement code {code!r}")
    fs = header.field_separator
    enc = header.encoding_characters if _valid_delimiters(fs, header.encoding_characters) else None
    if enc is None:
        fs, enc = DEFAULT_FIELD_SEPARATOR, DEFAULT_ENCODING_CHARACTERS
    comp = enc[0]
    now = now or datetime.now().astimezone()

    def esc(value: str) -> str:
        return escape_text(value, fs, enc)

    trigger = esc(header.trigger)
    msg_type = comp.join(["ACK", trigger, "ACK"]) if trigger else "ACK"
    msh = [
        "MSH",
        enc,
        esc(app),
        esc(facility),
        header.sending_application,
        header.sending_facility,
        format_dtm(now),
        "",
        msg_type,
        esc(control_id or _new_control_id(now)),
        header.processing_id_raw or esc(header.processing_id) or "P",
        header.version_raw or esc(header.version) or "2.5",
        "",
        "",
        "",
        "",
        header.country,
        header.charset_raw or esc(header.charset),
        header.language,
        "",
        header.profile,
    ]
    while msh[-1] == "":
        msh.pop()
    lines = [fs.join(msh), fs.join(["MSA", code, esc(header.control_id)])]
    for error in errors:
        location = comp.join(esc(part) for part in error.location.split("^")) if error.location else ""
        label = ERROR_LABELS.get(error.code, "")
        err = [
            "ERR",
            "",
            location,
            comp.join([esc(error.code), esc(label), "HL70357"]),
            esc(error.severity),
            esc(error.application_code) if error.application_code else "",
            "",
            "",
            esc(error.message),
        ]
        lines.append(fs.join(err))
    return _encode("\r".join(lines) + "\r", header.charset)


def _lenient_header(raw: bytes) -> MessageHeader:
    """Whatever can be read of the MSH of a message that failed parse()."""
    empty = MessageHeader("", "", "", "", "", "", "", "", "", "", "", "")
    first_line = re.split(rb"[\r\n]", raw.lstrip().lstrip(b"\xef\xbb\xbf"), maxsplit=1)[0]
    split = _split_msh(first_line.decode("latin-1"))
    if split is None or not _valid_delimiters(split[0], split[1]):
        return empty
    fs, enc, fields = split
    charset_raw = fields[18] if len(fields) > 18 else ""
    codec = charset_to_codec(_first_component(charset_raw, enc)) or "utf-8"
    text = first_line.decode(codec, errors="replace")
    msh = read_message(text)[0]
    processing_id = get_field(msh, 11, 1, 1)
    version = get_field(msh, 12, 1, 1)
    # Values that caused the rejection are not echoed in MSH: the ACK itself must be a valid message.
    return MessageHeader(
        sending_application=raw_field(msh, 3),
        sending_facility=raw_field(msh, 4),
        receiving_application=raw_field(msh, 5),
        receiving_facility=raw_field(msh, 6),
        datetime=get_field(msh, 7, 1, 1),
        message_type=get_field(msh, 9, 1, 1),
        trigger=get_field(msh, 9, 1, 2)[:3],
        structure=get_field(msh, 9, 1, 3),
        control_id=get_field(msh, 10)[:199],
        processing_id=processing_id if processing_id in PROCESSING_IDS else "",
        version=version if version in SUPPORTED_VERSIONS else "",
        charset=_first_component(charset_raw, enc)
        if charset_to_codec(_first_component(charset_raw, enc))
        else "",
        field_separator=fs,
        encoding_characters=enc,
        country=raw_field(msh, 17),
        language=raw_field(msh, 19),
        charset_raw=charset_raw if charset_to_codec(_first_component(charset_raw, enc)) else "",
    )


def build_nak_for_unparseable(
    raw: bytes,
    error: Hl7Error,
    *,
    app: str = "OPENSEGUR",
    facility: str = "OPENSEGUR",
    now: datetime | None = None,
    control_id: str | None = None,
) -> bytes:
    """AR/AE for a message parse() refused: echoes whatever of the MSH is readable, MSA-2 empty if not."""
    header = _lenient_header(raw)
    code = "AR" if error.reject else "AE"
    return build_ack(header, code, [error], app=app, facility=facility, now=now, control_id=control_id)
