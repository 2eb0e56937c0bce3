"""The lean reader answers every path as python-hl7's extract_field does, on the ANS examples and on hostile text."""

from __future__ import annotations

import hl7
import pytest

from opensegur.transactions.hl7v2 import decode
from opensegur.transactions.hl7v2_message import (
    LARGE_FIELD,
    Hl7Segment,
    get_field,
    raw_field,
    read_message,
    repetition_count,
    segments,
)
from tests.conftest import EXAMPLES

ANS_MESSAGES = sorted(p for p in EXAMPLES.rglob("*") if p.suffix in (".er7", ".hl7") and p.is_file())


def _reference(segment: hl7.Segment, field: int, rep: int, comp: int, sub: int) -> str:
    try:
        value = segment.extract_field(1, field, rep, comp, sub)
    except (IndexError, KeyError):
        return ""
    return str(value) if value is not None else ""


def _paths(segment: Hl7Segment) -> list[tuple[int, int, int, int]]:
    """Every path one level beyond what each field holds, so absent parts are compared too."""
    seps = segment.separators
    paths = []
    for field in range(1, len(segment) + 2):
        text = raw_field(segment, field)
        reps = text.count(seps[2]) + 2
        comps = max(text.count(seps[3]), 0) + 2
        subs = max(text.count(seps[4]), 0) + 2
        paths += [
            (field, rep, comp, sub)
            for rep in range(1, reps + 1)
            for comp in range(1, comps + 1)
            for sub in range(1, subs + 1)
            if comp * sub <= 64
        ]
    return paths


def _compare(text: str) -> int:
    ours = read_message(text)
    theirs = hl7.parse(text)
    assert len(ours) == len(theirs)
    compared = 0
    for mine, reference in zip(ours, theirs, strict=True):
        # python-hl7 keeps a segment without any separator ("ZZZ") as a bare string, whose [0][0] is "Z".
        bare = isinstance(reference[0], str)
        assert mine.id == (str(reference) if bare else str(reference[0][0]))
        assert len(mine) == len(reference)
        for field in range(1, len(mine) + 1):
            expected = str(reference(field)) if field < len(reference) else ""
            assert raw_field(mine, field) == expected
            expected_reps = len(reference(field)) if field < len(reference) else 0
            assert repetition_count(mine, field) == expected_reps
        for path in _paths(mine):
            assert get_field(mine, *path) == _reference(reference, *path), (mine.id, path)
            compared += 1
    return compared


@pytest.mark.parametrize("path", ANS_MESSAGES, ids=lambda p: str(p.relative_to(EXAMPLES)))
def test_every_path_of_the_ans_examples_reads_as_python_hl7_reads_it(path):
    text = decode(path.read_bytes())
    if not text.startswith("MSH"):
        pytest.skip("not a single HL7 v2 message (batch or notes)")
    assert _compare(text) > 0


HOSTILE = [
    # escapes of every kind, an unknown one, an unterminated one, an empty one
    "MSH|^~\\&|A|B|C|D|20240101||ADT^A28^ADT_A05|1|P|2.5\rPID|1||X\\F\\Y\\S\\Z\\T\\W\\R\\V\\E\\^^^D&1.2&ISO^PI"
    "||N\\.br\\M\\H\\H\\N\\\\\\Q\\X41\\^P\\Zabc\\~A&B&C^^^^^L",
    # empty fields, repetitions and components everywhere; a trailing separator
    "MSH|^~\\&||||||ADT^A28|2|P|2.5|\rPID||||~~~|^^^|&&&|^~&|",
    # other encoding characters, and a fifth (truncation) character
    "MSH#*$@%#A#B#C#D#20240101##ADT*A28#3#P#2.5\rPID#1##1*2$3*4%5@F@#A*B%C",
    "MSH|^~\\&#|A|B|||||ADT^A28|4|P|2.7\rPID|1||a^b&c#d",
    # a segment of one field, a segment id with separators in it
    "MSH|^~\\&|A|B|||||ADT^A28|5|P|2.5\rZZZ\rP^D|x|y",
    # a field above LARGE_FIELD (split when read): repetitions, components, subcomponents and escapes in it
    "MSH|^~\\&|A|B|||||ORU^R01|6|P|2.5\rOBX|1|ED|||^text^XML^Base64^"
    + "QUJD" * (LARGE_FIELD // 3)
    + "&x\\F\\y^z~r2^c2&s2|after",
]


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_paths_read_as_python_hl7_reads_them(text):
    assert _compare(text) > 0


def test_segments_are_found_by_id_in_order():
    message = read_message("MSH|^~\\&|A|B|||||ORU^R01|1|P|2.5\rOBX|1|ED\rNTE|1\rOBX|2|TX")
    assert [get_field(seg, 2) for seg in segments(message, "OBX")] == ["ED", "TX"]
    assert segments(message, "ZBE") == []


def test_a_raw_component_keeps_its_subcomponents_and_escapes():
    message = read_message("MSH|^~\\&|A|B|||||ORU^R01|1|P|2.5\rOBX|1|ED|||^text^XML^Base64^QUJD&RA\\F\\==~x")
    obx = segments(message, "OBX")[0]
    assert raw_field(obx, 5, 1, 5) == "QUJD&RA\\F\\=="
    assert raw_field(obx, 5, 2, 1) == "x"
    assert raw_field(obx, 5, 1, 6) == ""
