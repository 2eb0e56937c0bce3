"""Fixtures of the MSSanté tests: an ANS example CDA packaged as XDM, and the matching patient."""

from __future__ import annotations

import copy
from datetime import date
from pathlib import Path

import pytest

from opensegur.content.cda import parse_cda
from opensegur.content.xds_metadata import document_metadata, submission_set_metadata
from opensegur.documents.metadata import DocumentMetadata, SubmissionSetMetadata
from opensegur.transactions.mss_mail import MailPatient
from opensegur.transactions.xdm import build_xdm
from tests.conftest import SHARED

VAGUE2 = SHARED / "hl7v2-examples" / "Vague 2"
CR_RADIO_V1 = (
    VAGUE2
    / "Trans_Doc-CDA-HL7V2"
    / "TRANSMISSION_DOCS_CDA_EN_HL7V2_V2.1"
    / "MDM"
    / "Transmission initiale MDM"
) / "CR_Radio_CDAN1_v1.XML"
MSS_EXAMPLES = VAGUE2 / "Trans_LPS_CDA_MSSanté" / "TRANSMISSION_LPS_DOC_CDA_COURRIEL_FROM_MSSANTE_V1.1"
INS = "279035121518989"
INS_OID_TEST = "1.2.250.1.213.1.4.10"
DOC_ID = "1.2.250.1.71.4.2.2.120456789.71024000081"
PATIENT = MailPatient(INS, "PAT-TROIS", "DOMINIQUE", date(1979, 3, 28))
# A second valid test matricule (key computed with nir_key) for the "other patient" cases.
OTHER_INS = "180012A00100161"


def metadata_for(raw: bytes) -> tuple[DocumentMetadata, SubmissionSetMetadata]:
    _, header = parse_cda(raw)
    m = document_metadata(header, ipp="IPP1", ipp_authority_oid="1.2.250.1.999.1")
    ss = submission_set_metadata(
        m, unique_id="1.2.250.1.999.2.1", source_id="1.2.250.1.999.3", patient_class="I"
    )
    return m, ss


def package(raw: bytes) -> bytes:
    m, ss = metadata_for(raw)
    return build_xdm(
        ss, [(m, raw)], readme_text="OpenSégur — CH de test\nContact : dpi@ch.test", index_html_title="CR"
    )


@pytest.fixture(scope="session")
def cda() -> bytes:
    return CR_RADIO_V1.read_bytes()


@pytest.fixture(scope="session")
def _xdm(cda: bytes) -> bytes:
    return package(cda)


@pytest.fixture
def xdm(_xdm: bytes) -> bytes:
    return copy.copy(_xdm)


def other_patient_cda(cda: bytes) -> bytes:
    """The same CR re-addressed to another patient (new INS, new document id)."""
    return cda.replace(INS.encode(), OTHER_INS.encode()).replace(DOC_ID.encode(), (DOC_ID + "9").encode())


def example(path: str) -> Path:
    return Path(MSS_EXAMPLES) / path
