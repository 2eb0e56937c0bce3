"""WADO-RS negotiation and answer, as the ANS sample request asks."""

from __future__ import annotations

import email.parser

import pytest

from opensegur.imaging.wado import (
    MalformedMultipart,
    MultipartReader,
    NotAcceptable,
    accepted_transfer_syntaxes,
    multipart_dicom,
)
from tests.imaging.helpers import ANS_ACCEPT

pytestmark = pytest.mark.requirement("IMG-DRIMBOX-SOURCE")


def test_the_ans_request_is_ordered_by_its_q_values() -> None:
    got = accepted_transfer_syntaxes(ANS_ACCEPT)
    assert got[0] == "1.2.840.10008.1.2.4.70" and got[-1] == "1.2.840.10008.1.2.1" and len(got) == 7
    # Equal q-values keep the caller's order.
    assert got[1:3] == ["1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"]


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, ["1.2.840.10008.1.2.1"]),
        ('multipart/related; type="application/dicom"', ["1.2.840.10008.1.2.1"]),
        ('multipart/related; type="application/dicom"; transfer-syntax=*', ["*"]),
        ("*/*", ["1.2.840.10008.1.2.1"]),
        (
            'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50; q=0, '
            'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2',
            ["1.2.840.10008.1.2"],
        ),
    ],
)
def test_defaults_wildcards_and_refusals(accept: str | None, expected: list[str]) -> None:
    assert accepted_transfer_syntaxes(accept) == expected


@pytest.mark.parametrize(
    "accept",
    [
        "application/json",
        'multipart/related; type="application/octet-stream"',
        'multipart/related; type="application/dicom"; transfer-syntax=1.2.3; DROP',
        'multipart/related; type="application/dicom"; transfer-syntax=<script>',
        'multipart/related; type="application/dicom"; q=abc',
    ],
)
def test_what_is_not_a_dicom_instance_is_not_acceptable(accept: str) -> None:
    with pytest.raises(NotAcceptable):
        accepted_transfer_syntaxes(accept)


def test_the_answer_is_a_multipart_each_part_with_its_transfer_syntax() -> None:
    parts = [(b"\0" * 128 + b"DICM" + bytes([i]), f"1.2.840.10008.1.2.{i}") for i in (1, 2)]
    content_type, body = multipart_dicom(iter(parts), boundary="b0und")
    raw = b"".join(body)
    message = email.parser.BytesParser().parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + raw
    )
    assert message.is_multipart() and message.get_param("type") == "application/dicom"
    got = [(p.get_payload(decode=True), p.get_param("transfer-syntax")) for p in message.get_payload()]
    assert got == parts


def _read(
    content_type: str, raw: bytes, chunk: int, max_part: int = 10**6
) -> list[tuple[dict[str, str], bytes]]:
    reader = MultipartReader(content_type, max_part=max_part)
    got = []
    for start in range(0, len(raw), chunk):
        got += [(p.headers, p.body.read()) for p in reader.feed(raw[start : start + chunk])]
    reader.close()
    return got


@pytest.mark.parametrize("chunk", [1, 7, 64, 10**6])
def test_the_consumer_reads_back_each_instance_whatever_the_chunks(chunk: int) -> None:
    parts = [
        (b"\0" * 128 + b"DICM" + b"--b0und" + bytes([i]) * 300, f"1.2.840.10008.1.2.{i}") for i in (1, 2)
    ]
    content_type, body = multipart_dicom(iter(parts), boundary="b0und")
    got = _read(content_type, b"".join(body), chunk)
    assert [(data, headers["content-type"].rsplit("=", 1)[1]) for headers, data in got] == parts


def test_an_answer_cut_before_its_closing_boundary_is_told_apart() -> None:
    content_type, body = multipart_dicom(iter([(b"DICM" * 10, "1.2.840.10008.1.2.1")] * 2), boundary="b0und")
    raw = b"".join(body)
    with pytest.raises(MalformedMultipart, match="interrompue"):
        _read(content_type, raw[: len(raw) - 30], 16)


@pytest.mark.parametrize(
    "content_type",
    [
        "application/dicom",
        "multipart/related; type=application/dicom",
        "multipart/related; boundary=" + "x" * 300,
    ],
)
def test_an_answer_that_is_no_multipart_is_refused(content_type: str) -> None:
    with pytest.raises(MalformedMultipart):
        MultipartReader(content_type, max_part=10)


def test_an_oversized_instance_is_refused_without_being_held() -> None:
    content_type, body = multipart_dicom(iter([(b"x" * 5000, "1.2.840.10008.1.2.1")]), boundary="b0und")
    with pytest.raises(MalformedMultipart, match="refusée"):
        _read(content_type, b"".join(body), 512, max_part=1000)
