"""The vaccinations read from the ANS VAC and VAC-NOTE examples."""

from __future__ import annotations

from pathlib import Path

import pytest

from opensegur.content.cda import parse_cda
from opensegur.content.vaccination import vaccinations

EXAMPLES = Path("/work/shared/cisis/ExemplesCDA")
pytestmark = [
    pytest.mark.skipif(not EXAMPLES.exists(), reason="ANS CDA examples not available"),
    pytest.mark.requirement("DMP-CONSULT-AIR"),
]


def test_the_history_gives_each_injection_with_its_rank_lot_vaccinator_and_reactions() -> None:
    root, _ = parse_cda((EXAMPLES / "VAC_2023.01.xml").read_bytes())
    found = vaccinations(root)
    assert [(v.date[:8], v.rank, v.lot) for v in found] == [
        ("1975", "1", "235421176"),
        ("20090928", "1", "4456668"),
        ("20090928", "2", "4456672"),
        ("20210409", "1", "357904636"),
    ]
    bcg = found[0]
    assert bcg.vaccine.startswith("VACCIN BCG SSI") and bcg.protects_against == "Vaccin antituberculeux"
    assert bcg.vaccinator == "Charles MULLER (Cabinet médical du Dr MULLER)" and bcg.given
    assert bcg.reactions == ("Fièvre due à des médicaments",)


def test_a_vaccination_not_given_is_said_so() -> None:
    raw = (EXAMPLES / "VAC-NOTE_2023.01.xml").read_bytes()
    root, _ = parse_cda(
        raw.replace(b'moodCode="EVN" negationInd="false"', b'moodCode="EVN" negationInd="true"', 1)
    )
    [note] = vaccinations(root)
    assert not note.given and note.lot == "4456672" and note.rank == "2"
