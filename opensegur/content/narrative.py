"""What a clinician reads of a CDA: its narrative (level 3) as plain data for a page, or its embedded file (level 1).

The narrative is read, never passed through: each section becomes a title and blocks (paragraphs, lists, tables)
of plain text that the page's template escapes, so markup or script a sender put in a narrative is shown as text
and never runs. Written by hand because the reference rendering (the ANS display stylesheets) emits HTML that
would have to be trusted; this keeps the structure a reader needs (section titles, result tables) and no more.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field

from lxml import etree

from opensegur.content.cda import NS, CdaError

__all__ = ["Block", "EmbeddedFile", "Section", "attachment", "embedded_file", "sections"]

_CDA = f"{{{NS['cda']}}}"
MAX_DEPTH = 12  # nested sections shown; deeper ones are flattened into their parent


@dataclass
class Block:
    kind: str  # "paragraph" | "list" | "table" | "media" (text: the observationMedia's ID)
    text: str = ""
    items: list[str] = field(default_factory=list)
    caption: str = ""
    head: list[list[str]] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)


@dataclass
class Section:
    title: str  # "" for an untitled section (a CR-BIO's result groups often are)
    blocks: list[Block]
    depth: int


@dataclass(frozen=True)
class EmbeddedFile:
    media_type: str
    content: bytes


def _plain(el: etree._Element | None) -> str:
    if el is None:
        return ""
    return " ".join("".join(el.itertext()).split())


def _rows(parent: etree._Element | None) -> list[list[str]]:
    if parent is None:
        return []
    rows = ([_plain(c) for c in tr if c.tag in (f"{_CDA}td", f"{_CDA}th")] for tr in parent.iter(f"{_CDA}tr"))
    return [r for r in rows if any(r)]


def _blocks(text: etree._Element) -> list[Block]:
    blocks: list[Block] = []
    loose = " ".join((text.text or "").split())
    for child in text:
        if child.tag == f"{_CDA}table":
            head = _rows(child.find(f"{_CDA}thead"))
            bodies = child.findall(f"{_CDA}tbody")
            rows = [r for b in bodies for r in _rows(b)] if bodies else _rows(child)[len(head) :]
            if head or rows:  # a table that only lays out a renderMultiMedia has nothing to read
                blocks.append(
                    Block("table", caption=_plain(child.find(f"{_CDA}caption")), head=head, rows=rows)
                )
        elif child.tag == f"{_CDA}list":
            blocks.append(Block("list", items=[_plain(i) for i in child.findall(f"{_CDA}item")]))
        elif isinstance(child.tag, str):
            piece = _plain(child)
            if piece:
                blocks.append(Block("paragraph", text=piece))
        tail = " ".join((child.tail or "").split())
        if tail:
            loose = f"{loose} {tail}".strip()
    if loose:
        blocks.insert(0, Block("paragraph", text=loose))
    # A file shown in place (renderMultiMedia: the PDF copy of a CR-BIO, an image), wherever the text put it.
    refs = (m.get("referencedObject", "") for m in text.iter(f"{_CDA}renderMultiMedia"))
    blocks.extend(Block("media", text=ref) for ref in dict.fromkeys(refs) if ref)
    return blocks


def sections(root: etree._Element) -> list[Section]:
    """The sections of a structuredBody in document order, each with its depth (0 = top level)."""
    body = root.find("cda:component/cda:structuredBody", NS)
    if body is None:
        return []
    out: list[Section] = []

    def walk(section: etree._Element, depth: int) -> None:
        text = section.find(f"{_CDA}text")
        out.append(
            Section(
                _plain(section.find(f"{_CDA}title")),
                _blocks(text) if text is not None else [],
                min(depth, MAX_DEPTH),
            )
        )
        for sub in section.findall(f"{_CDA}component/{_CDA}section"):
            walk(sub, depth + 1)

    for top in body.findall(f"{_CDA}component/{_CDA}section"):
        walk(top, 0)
    return out


def embedded_file(root: etree._Element) -> EmbeddedFile | None:
    """The file of a level-1 CDA (``nonXMLBody/text`` in base64), or None for a structured body."""
    text = root.find("cda:component/cda:nonXMLBody/cda:text", NS)
    return None if text is None else _decoded(text, "corps non structuré")


def attachment(root: etree._Element, ref: str) -> EmbeddedFile | None:
    """The file of the observationMedia a narrative's renderMultiMedia names (``ID``), or None."""
    found = root.xpath(".//cda:observationMedia[@ID = $ref]/cda:value", namespaces=NS, ref=ref)
    return _decoded(found[0], "fichier joint") if found else None


def _decoded(el: etree._Element, what: str) -> EmbeddedFile:
    if (el.get("representation") or "").upper() != "B64":
        raise CdaError("CDA_BODY_ENCODING", f"{what} non encodé en base64 : non affichable")
    try:
        content = base64.b64decode("".join((el.text or "").split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise CdaError("CDA_BODY_ENCODING", f"{what} : base64 invalide ({exc})") from exc
    return EmbeddedFile(el.get("mediaType") or "application/octet-stream", content)
