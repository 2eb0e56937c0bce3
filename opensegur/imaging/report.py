"""The facts of an imaging report (CR d'imagerie, LOINC 18748-4, volet IMG-CR-IMG) that a DRIMbox source needs
beyond the CDA header: which exam it documents (DICOM Study Instance UID), under which order and accession number,
with which modalities and anatomical regions.

Where the volet places them: ``documentationOf/serviceEvent/id/@root`` (the study), ``inFulfillmentOf/order/id``
(the placer order number) and ``inFulfillmentOf/order/ps3-20:accessionNumber``, the act's translations qualified
by DICOM 121139 « Modalité d'imagerie » (JDV_ModaliteAcquisition_CISIS) and LOINC 39111-0 « localisation
anatomique » (JDV_RegionAnatomique_CISIS)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from lxml import etree

from opensegur.content.cda import CdaHeader, Identifier, parse_cda
from opensegur.documents.metadata import Coded
from opensegur.errors import OpenSegurError
from opensegur.imaging.uids import is_uid

__all__ = ["IMAGING_REPORT_CODE", "ImagingReport", "ImagingReportError", "read_imaging_report"]

IMAGING_REPORT_CODE = "18748-4"  # LOINC « CR d'imagerie médicale »
_NS = {"hl7": "urn:hl7-org:v3", "ps3-20": "urn:dicom-org:ps3-20"}
_DCM = "1.2.840.10008.2.16.4"
_MODALITY_QUALIFIER = "121139"
_REGION_QUALIFIER = "39111-0"


class ImagingReportError(OpenSegurError):
    """Not an imaging report a DRIMbox can publish: the French reason."""


@dataclass(frozen=True)
class ImagingReport:
    header: CdaHeader
    study_instance_uid: str
    accession: Identifier | None = None  # root: the issuer of the accession number
    order: Identifier | None = None  # placer order number
    act: Coded | None = None
    modalities: list[Coded] = field(default_factory=list)
    regions: list[Coded] = field(default_factory=list)

    def about(self, study_instance_uid: str, ins_matricule: str, ins_oid: str) -> ImagingReport:
        """The same report on another exam and patient: the demo's and the bench's exams, made from the ANS
        example."""
        patient = replace(self.header.patient, ins_matricule=ins_matricule, ins_oid=ins_oid)
        return replace(
            self, study_instance_uid=study_instance_uid, header=replace(self.header, patient=patient)
        )


def _coded(el: etree._Element) -> Coded:
    return Coded(el.get("code", ""), el.get("codeSystem", ""), el.get("displayName", ""))


def _identifier(el: etree._Element | None) -> Identifier | None:
    if el is None or not el.get("root"):
        return None
    return Identifier(el.get("root", ""), el.get("extension"))


def _qualified(code: etree._Element, qualifier: str) -> list[Coded]:
    found = code.xpath("hl7:translation[hl7:qualifier/hl7:name/@code = $q]", namespaces=_NS, q=qualifier)
    return [_coded(t) for t in found if isinstance(t, etree._Element) and t.get("code")]


def imaging_facts(root: etree._Element, header: CdaHeader) -> ImagingReport:
    """The imaging facts of a parsed CDA; ImagingReportError when it is not an imaging report or names no exam."""
    if header.code is None or header.code.code != IMAGING_REPORT_CODE:
        raise ImagingReportError(
            f"Le document n'est pas un compte rendu d'imagerie (code {header.code.code if header.code else '?'}, "
            f"attendu {IMAGING_REPORT_CODE})"
        )
    event = root.find("hl7:documentationOf/hl7:serviceEvent", _NS)
    study = event.find("hl7:id", _NS) if event is not None else None
    uid = study.get("root", "") if study is not None else ""
    if not is_uid(uid):
        raise ImagingReportError(
            "Identifiant de l'examen absent ou invalide : documentationOf/serviceEvent/id/@root doit porter le "
            "Study Instance UID DICOM (64 caractères au plus)"
        )
    order = root.find("hl7:inFulfillmentOf/hl7:order", _NS)
    code = event.find("hl7:code", _NS) if event is not None else None
    return ImagingReport(
        header,
        uid,
        accession=_identifier(order.find("ps3-20:accessionNumber", _NS)) if order is not None else None,
        order=_identifier(order.find("hl7:id", _NS)) if order is not None else None,
        act=_coded(code) if code is not None and code.get("code") else None,
        modalities=[m for m in _qualified(code, _MODALITY_QUALIFIER) if m.scheme == _DCM]
        if code is not None
        else [],
        regions=_qualified(code, _REGION_QUALIFIER) if code is not None else [],
    )


def read_imaging_report(raw: bytes) -> ImagingReport:
    """Parse untrusted CDA bytes (``parse_cda``'s limits apply) and read the imaging facts."""
    root, header = parse_cda(raw)
    return imaging_facts(root, header)
