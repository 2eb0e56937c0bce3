"""The MHD flow on both databases: masterIdentifier look-ups go through the JSON ``context`` column."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select

from opensegur.flows.mhd_intake import accept_bundle
from opensegur.ops.demo import load_demo
from opensegur.store.db import Database
from opensegur.store.models import Document, Job, Structure
from opensegur.transactions.mhd import FhirError, parse_provide_bundle
from tests.mhd.helpers import bundle, document, ipp_subject, new_master
from tests.web.test_rest_intake import make_pdf, qualified_patient

LIMIT = 20 * 1024 * 1024


def _accept(db: Database, b: dict[str, Any]) -> Any:
    parsed = parse_provide_bundle(b, max_document_bytes=LIMIT)
    with db.session() as s:
        return accept_bundle(s, parsed, oid_root="1.2.250.1.999.42", actor="test")


def test_resend_is_idempotent_and_a_pdf_is_replaced_by_the_id_its_sender_gave(db: Database) -> None:
    load_demo(db)
    patient = qualified_patient(db)
    with db.session() as s:
        authority = s.get_one(Structure, patient["site"]).ipp_authority_oid
    assert authority is not None
    subject = ipp_subject(patient, authority)
    master = new_master()
    first = bundle(document(make_pdf(), subject, master=master))
    created = _accept(db, first)
    assert [r[0] for r in created.results] == ["201 Created"] * 3 and len(created.created) == 1
    again = _accept(db, first)
    assert again.created == [] and again.existing == created.created
    assert [r[0] for r in again.results] == ["200 OK"] * 3

    # The sender names the PDF it replaces by its own masterIdentifier, not by the platform's CDA id.
    replaces = [
        {"code": "replaces", "target": {"identifier": {"system": "urn:ietf:rfc:3986", "value": master}}}
    ]
    second = _accept(db, bundle(document(make_pdf(2), subject, relates_to=replaces)))
    with db.session() as s:
        original = s.get_one(Document, created.created[0])
        replacement = s.get_one(Document, second.created[0])
        assert replacement.kind == "replacement" and replacement.parent_unique_id == original.unique_id
        assert replacement.set_id == original.set_id and replacement.version == 2
        assert s.scalar(select(func.count()).select_from(Job).where(Job.kind == "document.process")) == 2

    with pytest.raises(FhirError) as refused:
        _accept(db, bundle(document(make_pdf(3), subject, master=master)))
    assert refused.value.status == 409 and refused.value.code == "conflict"
