"""An HL7 v2 message as our readers see it: segments split into fields, and a field split into repetitions,
components and subcomponents only along the path asked for.

Written here because python-hl7's ``parse`` builds every container of the message up front: 97 containers for
a three-segment A28 (a tenth of the intake's CPU with its ``extract_field``), 1.6 ms for the 330 KB of an MDM
whose payload is then read once, raw. What a path yields is what python-hl7's ``Segment.extract_field``
yields for it, unescaped by python-hl7's own ``hl7.util.unescape``; tests compare both, path by path, on the
ANS examples.

A field larger than ``LARGE_FIELD`` (an ED document in OBX-5) is split into its components when the message is
read and its text is not kept: its base64 payload is then handed out without another copy, which a 50 MB
document would otherwise cost.
"""

from __future__ import annotations

from hl7.util import unescape

__all__ = [
    "LARGE_FIELD",
    "Hl7Message",
    "Hl7Segment",
    "get_field",
    "raw_field",
    "read_message",
    "repetition_count",
    "segments",
]

LARGE_FIELD = 64 * 1024
_MSH_LIKE = ("MSH", "BHS", "FHS")  # headers whose fields 1 and 2 are the separators themselves


class Hl7Segment:
    """``fields[n]`` is field n as received (``fields[0]`` the segment id; for MSH, ``fields[1]`` the field
    separator and ``fields[2]`` the encoding characters, as the standard numbers them), "" for a large field,
    whose repetitions, split into components, are ``large[n]``.

    ``separators`` ("\\r", field, repetition, component, subcomponent) and ``esc`` are named as python-hl7 names
    them: its ``unescape`` reads them from the segment."""

    __slots__ = ("esc", "fields", "large", "separators")

    def __init__(self, fields: list[str], separators: str, esc: str) -> None:
        self.separators = separators
        self.esc = esc
        self.large: dict[int, list[list[str]]] = {}
        for n, text in enumerate(fields):
            if len(text) > LARGE_FIELD:
                self.large[n] = [rep.split(separators[3]) for rep in text.split(separators[2])]
                fields[n] = ""
        self.fields = fields

    @property
    def id(self) -> str:
        return self.fields[0]

    def __len__(self) -> int:
        return len(self.fields)

    def __repr__(self) -> str:
        return f"Hl7Segment({self.id})"


Hl7Message = list[Hl7Segment]


def read_message(text: str) -> Hl7Message:
    """The segments of ``text``, which starts with an MSH whose separators were checked (hl7v2.parse)."""
    fs = text[3]
    end = text.find(fs, 4)
    encoding = text[4:end] if end > 0 else text[4:]
    # Missing encoding characters take the standard's defaults, as python-hl7's parse plan does.
    chars = (encoding + "^~\\&"[len(encoding) :])[:4]
    separators = "\r" + fs + chars[1] + chars[0] + chars[3]  # segment, field, repetition, component, sub
    esc = chars[2]
    message: Hl7Message = []
    for line in text.split("\r"):
        header = line[:3] in _MSH_LIKE and line[3:4] == fs
        fields = [line[:3], fs, *line[4:].split(fs)] if header else line.split(fs)
        message.append(Hl7Segment(fields, separators, esc))
    return message


def segments(message: Hl7Message, segment_id: str) -> list[Hl7Segment]:
    """All segments with this id, in their order; [] when none."""
    return [seg for seg in message if seg.fields[0] == segment_id]


def raw_field(segment: Hl7Segment, field: int, rep: int = 0, comp: int = 0) -> str:
    """Field ``field`` as received, or only its repetition ``rep`` and that repetition's component ``comp``;
    no unescaping, and a large field's component without a copy. "" when absent."""
    if field >= len(segment.fields):
        return ""
    separators = segment.separators
    large = segment.large.get(field)
    if large is not None:
        if not rep:
            return separators[2].join(separators[3].join(comps) for comps in large)
        if rep > len(large):
            return ""
        comps = large[rep - 1]
        if not comp:
            return separators[3].join(comps)
        return comps[comp - 1] if comp <= len(comps) else ""
    text = segment.fields[field]
    if rep:
        text = _part(text, separators[2], rep)
        if comp:
            text = _part(text, separators[3], comp)
    return text


def get_field(segment: Hl7Segment, field: int, rep: int = 1, comp: int = 1, sub: int = 1) -> str:
    """Unescaped value at segment-field.rep.comp.sub, "" when absent (a path deeper than what was sent
    included)."""
    if field >= len(segment.fields):
        return ""
    if field <= 2 and segment.fields[0] in _MSH_LIKE:
        return segment.fields[field] if rep == comp == sub == 1 else ""
    text = _part(raw_field(segment, field, rep, comp), segment.separators[4], sub)
    return str(unescape(segment, text)) if text else ""


def repetition_count(segment: Hl7Segment, field: int) -> int:
    if field >= len(segment.fields):
        return 0
    if field in segment.large:
        return len(segment.large[field])
    if field <= 2 and segment.fields[0] in _MSH_LIKE:
        return 1
    return segment.fields[field].count(segment.separators[2]) + 1


def _part(text: str, separator: str, index: int) -> str:
    if index == 1:
        cut = text.find(separator)
        return text if cut < 0 else text[:cut]
    parts = text.split(separator, index)
    return parts[index - 1] if index <= len(parts) else ""
