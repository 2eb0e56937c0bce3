"""The IHE XDS.b and OASIS ebRS 3.0 schemas our SOAP bodies and METADATA.XML are held to (sources in SOURCE.md)."""

from __future__ import annotations

import base64
import copy
import functools
from pathlib import Path

from lxml import etree

from opensegur.transport.mtom import XOP_NS, cid_of_href

XDS_XSD = Path(__file__).parent / "xds" / "XDS.b_DocumentRepository.xsd"


@functools.cache
def xds_schema() -> etree.XMLSchema:
    """ProvideAndRegister, Retrieve, SubmitObjectsRequest, AdhocQuery and RegistryResponse, through the imports."""
    return etree.XMLSchema(etree.parse(str(XDS_XSD)))


def schema_errors(el: etree._Element, attachments: dict[str, bytes] | None = None) -> list[str]:
    """The schema's complaints about ``el``, each ``xop:Include`` first replaced by its MIME part in base64:
    the schemas describe the XOP infoset, where an optimised element holds its base64 text."""
    doc = copy.deepcopy(el)
    for include in doc.iter(f"{{{XOP_NS}}}Include"):
        parent = include.getparent()
        assert parent is not None
        parent.remove(include)
        parent.text = base64.b64encode((attachments or {})[cid_of_href(include.get("href", ""))]).decode()
    schema = xds_schema()
    if schema.validate(doc):
        return []
    return [f"{e.line}: {e.message}" for e in schema.error_log]
