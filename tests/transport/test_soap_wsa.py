from __future__ import annotations

from lxml import etree

from opensegur.transport.soap import SOAP12_NS, WSA_NS, envelope, parse_envelope, wsa_headers, wsa_values


def test_request_and_response_addressing_round_trip() -> None:
    blocks = wsa_headers(
        "urn:ihe:iti:2007:RegistryStoredQuery", to="https://dmp/registry", message_id="urn:uuid:1"
    )
    action = blocks[0]
    assert action.tag == f"{{{WSA_NS}}}Action" and action.get(f"{{{SOAP12_NS}}}mustUnderstand") == "true"
    headers, _ = parse_envelope(envelope(etree.Element("{urn:x}Q"), blocks))
    assert wsa_values(headers) == {
        "Action": "urn:ihe:iti:2007:RegistryStoredQuery",
        "MessageID": "urn:uuid:1",
        "ReplyTo": "http://www.w3.org/2005/08/addressing/anonymous",
        "To": "https://dmp/registry",
    }
    reply = wsa_headers("urn:ihe:iti:2007:RegistryStoredQueryResponse", relates_to="urn:uuid:1")
    headers, _ = parse_envelope(envelope(etree.Element("{urn:x}R"), reply))
    assert wsa_values(headers) == {
        "Action": "urn:ihe:iti:2007:RegistryStoredQueryResponse",
        "RelatesTo": "urn:uuid:1",
    }


def test_generated_message_ids_are_unique() -> None:
    first = wsa_values(wsa_headers("a"))["MessageID"]
    assert first.startswith("urn:uuid:") and first != wsa_values(wsa_headers("a"))["MessageID"]
