"""What a clinician reads of a CDA: level-3 sections as plain text, level-1 files decoded, defects refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from lxml import etree

from opensegur.content.cda import CdaError, parse_cda
from opensegur.content.narrative import attachment, embedded_file, sections

EXAMPLES = Path("/work/shared/cisis/ExemplesCDA")
needs_examples = pytest.mark.skipif(not EXAMPLES.exists(), reason="ANS CDA examples not available")
CDA = "urn:hl7-org:v3"


@needs_examples
def test_a_cr_bio_reads_as_titled_sections_and_result_tables() -> None:
    root, _ = parse_cda((EXAMPLES / "BIO-CR-BIO_2024.01_TSH_1.xml").read_bytes())
    found = sections(root)
    assert found[0].title == "BIOCHIMIE" and found[0].depth == 0
    [table] = [b for s in found for b in s.blocks if b.kind == "table" and b.rows]
    assert table.head == [["BILAN THYROIDIEN", "Résultats", "Valeurs de référence"]]
    assert table.rows[0] == ["Thyréostimuline (TSH) (ECL Modular)", "1.950 mUI/l", "(0.270 - 4.200)"]
    # Its « Copie du document » section shows the report's PDF in place (renderMultiMedia → observationMedia).
    [copy] = [s for s in found if s.title == "Copie du document"]
    assert [(b.kind, b.text) for b in copy.blocks] == [("media", "doc-1")]
    pdf = attachment(root, "doc-1")
    assert pdf is not None and pdf.media_type == "application/pdf" and pdf.content.startswith(b"%PDF-")
    # The name is an XPath variable, never spliced into the expression.
    assert attachment(root, "doc-2") is None and attachment(root, "x' or @ID or 'y") is None


@needs_examples
def test_a_level_1_document_gives_its_pdf() -> None:
    root, _ = parse_cda((EXAMPLES / "BIO-CR-BIO_2021.01_CDA-R2-Niveau-1.xml").read_bytes())
    file = embedded_file(root)
    assert file is not None and file.media_type == "application/pdf" and file.content.startswith(b"%PDF-")
    assert sections(root) == []


def _body(text: str) -> etree._Element:
    return etree.fromstring(
        f'<ClinicalDocument xmlns="{CDA}"><component><structuredBody><component><section>'
        f"<title>Conclusion</title><text>{text}</text></section></component></structuredBody></component>"
        "</ClinicalDocument>"
    )


def test_markup_in_a_narrative_is_text_lists_and_loose_text_are_kept() -> None:
    root = _body(
        "Avant <content>ceci</content> <list><item>un</item><item>deux</item></list>"
        '<paragraph><script xmlns="http://www.w3.org/1999/xhtml">alert(1)</script>fin</paragraph>'
    )
    [section] = sections(root)
    kinds = [(b.kind, b.text or b.items) for b in section.blocks]
    assert kinds == [
        ("paragraph", "Avant"),
        ("paragraph", "ceci"),
        ("list", ["un", "deux"]),
        ("paragraph", "alert(1)fin"),
    ]


def test_a_level_1_body_not_in_base64_is_refused() -> None:
    root = etree.fromstring(
        f'<ClinicalDocument xmlns="{CDA}"><component><nonXMLBody><text mediaType="application/pdf">%PDF</text>'
        "</nonXMLBody></component></ClinicalDocument>"
    )
    with pytest.raises(CdaError, match="base64"):
        embedded_file(root)
    root[0][0][0].set("representation", "B64")
    root[0][0][0].text = "@@@"
    with pytest.raises(CdaError, match="base64 invalide"):
        embedded_file(root)
