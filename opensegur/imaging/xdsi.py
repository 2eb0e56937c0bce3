"""The DMP entry of a KOS manifest (XDS-I.b, DRIM-M flavour) and the checks before building one.

The entry inherits what the imaging report's own entry says of the patient, the act's dates, the facility, the
practice setting, the visibility and the authors, and differs in what it is: class 31 « Imagerie médicale », type
IMG-KOS, format 1.2.840.10008.5.1.4.1.1.88.59, ``application/dicom``, found by its modalities and anatomical
regions (eventCodeList) and by its accession number, study and order (referenceIdList), which the DRIMbox
consumers of other hospitals search on.

The ANS XDS sample (DRIM-M_DATA ``Echantillons validateurs/Validateur XDS/XDS.xml``) codes a modality under the
JDV's OID 1.2.250.1.213.1.1.5.618 and one region under the JDV's OID 1.2.250.1.213.1.1.5.695 but another under
1.2.250.1.213.2.5; the ANS prototype searches with the two JDV OIDs. Both schemes here are the JDV OIDs."""

from __future__ import annotations

import hashlib
from dataclasses import replace

from opensegur.content.jdv import class_code_for_type, load_value_set
from opensegur.content.xds_metadata import cx
from opensegur.documents.metadata import Coded, DocumentMetadata
from opensegur.errors import OpenSegurError
from opensegur.imaging.report import ImagingReport
from opensegur.imaging.study import Study

__all__ = [
    "KOS_FORMAT",
    "KOS_MIME",
    "KOS_TYPE",
    "ExamMismatch",
    "check_exam",
    "event_codes",
    "kos_metadata",
    "reference_ids",
]

KOS_FORMAT = Coded(
    "1.2.840.10008.5.1.4.1.1.88.59",
    "1.2.840.10008.2.6.1",
    "Document de références d'objets d'imagerie (XDS-I)",
)
KOS_MIME = "application/dicom"
KOS_TYPE = Coded("IMG-KOS", "1.2.250.1.213.1.1.4.12", "Reference d'objets d'un examen d'imagerie")
KOS_TITLE = "Référence d'objets d'un examen d'imagerie"
JDV_MODALITIES = "1.2.250.1.213.1.1.5.618"  # JDV_ModaliteAcquisition_CISIS
JDV_REGIONS = "1.2.250.1.213.1.1.5.695"  # JDV_RegionAnatomique_CISIS
ACCESSION, STUDY, ORDER = (
    "urn:ihe:iti:xds:2013:accession",
    "urn:ihe:iti:xds:2016:studyInstanceUID",
    "urn:ihe:iti:xds:2013:order",
)
# The ANS sample's assigning authority of a Study Instance UID, which needs none: a DICOM UID is unique by itself.
STUDY_AUTHORITY = "1.2.3.4.5.6"


class ExamMismatch(OpenSegurError):
    """The report and the PACS do not describe the same exam of the same patient: no manifest is published."""


def check_exam(report: ImagingReport, study: Study, ipp: str | None) -> None:
    """The PACS's exam is the report's: same study, same accession number when both give one, and a patient the
    PACS names by the report's INS or by the patient's IPP. Raises ExamMismatch with the French reason."""
    if study.study_instance_uid != report.study_instance_uid:
        raise ExamMismatch(
            f"Le PACS décrit l'examen {study.study_instance_uid}, le compte rendu l'examen "
            f"{report.study_instance_uid}"
        )
    accession = report.accession.extension if report.accession else None
    if accession and study.accession_number and study.accession_number != accession:
        raise ExamMismatch(
            f"Numéro d'accession discordant : {study.accession_number} dans le PACS, {accession} dans le compte "
            "rendu"
        )
    known = {report.header.patient.ins_matricule, ipp} - {None, ""}
    if study.patient_id not in known:
        raise ExamMismatch(
            "Le patient des images n'est pas celui du compte rendu (PatientID du PACS différent de l'IPP et de "
            "l'INS)"
        )


def event_codes(report: ImagingReport, study: Study) -> list[Coded]:
    """The anatomical regions of the report, then the acquisition modalities — the PACS's, which the images
    carry, else the report's — each as the JDV lists it; a code outside its JDV is left out."""
    regions, modalities = load_value_set(JDV_REGIONS), load_value_set(JDV_MODALITIES)
    found: list[Coded] = []
    for region in report.regions:
        known = regions.get(region.code)
        if known is not None:
            found.append(Coded(known.code, JDV_REGIONS, known.display))
    for code in study.modalities or [m.code for m in report.modalities]:
        known = modalities.get(code)
        if known is not None:
            found.append(Coded(known.code, JDV_MODALITIES, known.display))
    return list(dict.fromkeys(found))


def reference_ids(report: ImagingReport) -> list[str]:
    """referenceIdList: the accession number and the placer order with their issuers, and the study."""
    ids = []
    if report.accession is not None and report.accession.extension:
        ids.append(cx(report.accession.extension, report.accession.root, ACCESSION))
    ids.append(cx(report.study_instance_uid, STUDY_AUTHORITY, STUDY))
    if report.order is not None and report.order.extension:
        ids.append(cx(report.order.extension, report.order.root, ORDER))
    return ids


def kos_metadata(
    report_entry: DocumentMetadata, report: ImagingReport, study: Study, sop_instance_uid: str, content: bytes
) -> DocumentMetadata:
    """The KOS's entry, from the imaging report's entry (``content.xds_metadata.document_metadata``)."""
    class_code = class_code_for_type(KOS_TYPE.code)
    assert class_code is not None  # ASS_X04: IMG-KOS → 31
    return replace(
        report_entry,
        unique_id=sop_instance_uid,
        mime_type=KOS_MIME,
        class_code=class_code,
        type_code=KOS_TYPE,
        format_code=KOS_FORMAT,
        title=KOS_TITLE,
        comments="",
        event_codes=event_codes(report, study),
        reference_ids=reference_ids(report),
        size=len(content),
        hash_sha1=hashlib.sha1(content).hexdigest(),
        entry_uuid=None,
        repository_unique_id=None,
        availability_status=None,
        version=None,
        logical_id=None,
    )
