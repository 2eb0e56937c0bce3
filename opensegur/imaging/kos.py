"""The KOS manifest of an exam (DICOM Key Object Selection, TID 2010 « Manifest »), as a DRIMbox source publishes
it to the DMP in the DRIM-M flavour of XDS-I.b: the patient named by the INS, the request by its accession number,
and each series by the WADO-RS address of this DRIMbox (RetrieveURL) instead of an AE title.

Built by hand with pydicom: highdicom's KeyObjectSelectionDocument knows no RetrieveURL nor the ANS's request and
patient identification (digest imaging.md §4.1). Where the ANS sample (DRIM-M_DATA ``informatif/KIN``) and DICOM
differ, DICOM wins and the choice is said in place."""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import datetime

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, ImplicitVRLittleEndian

from opensegur.content.cda import Identifier
from opensegur.imaging.report import ImagingReport
from opensegur.imaging.study import Series, Study

__all__ = ["KOS_SOP_CLASS", "KosIds", "build_kos", "kos_bytes", "retrieve_url"]

KOS_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.88.59"
INS_ISSUER = "ASIP-SANTE-INS-NIR"  # IssuerOfPatientID of an INS (ANS sample; the PID-3.4 namespace of PAM FR)
MANIFEST_SERIES_NUMBER = 59  # as the ANS sample: apart from the acquisition series


@dataclass(frozen=True)
class KosIds:
    """The UIDs the DRIMbox gives its manifest: the SOP instance is also the XDS uniqueId of the DMP entry."""

    sop_instance_uid: str
    series_instance_uid: str


def retrieve_url(wado_base: str, study_uid: str, series_uid: str) -> str:
    """Where another DRIMbox retrieves a series from this one (WADO-RS, DICOM PS3.18 §10.4)."""
    return f"{wado_base.rstrip('/')}/studies/{study_uid}/series/{series_uid}"


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _issuer(identifier: Identifier) -> Sequence:
    item = Dataset()
    item.UniversalEntityID, item.UniversalEntityIDType = identifier.root, "ISO"
    return Sequence([item])


def _request(report: ImagingReport) -> Dataset:
    """The request the exam fulfils (ReferencedRequestSequence): accession number and placer order with their
    issuers; the top-level AccessionNumber stays empty, as in the ANS sample, since one manifest may serve
    several requests."""
    request = Dataset()
    request.StudyInstanceUID = report.study_instance_uid
    request.AccessionNumber = report.accession.extension or "" if report.accession else ""
    if report.accession is not None:
        request.IssuerOfAccessionNumberSequence = _issuer(report.accession)
    request.PlacerOrderNumberImagingServiceRequest = report.order.extension or "" if report.order else ""
    if report.order is not None:
        request.OrderPlacerIdentifierSequence = _issuer(report.order)
    request.FillerOrderNumberImagingServiceRequest = ""
    request.RequestedProcedureID = ""
    request.RequestedProcedureDescription = report.act.display if report.act else ""
    request.RequestedProcedureCodeSequence = Sequence()
    request.ReferencedStudySequence = Sequence()
    return request


def _evidence(study: Study, wado_base: str) -> Sequence:
    series_items = []
    for series in study.series:
        item = Dataset()
        item.RetrieveURL = retrieve_url(wado_base, study.study_instance_uid, series.series_instance_uid)
        item.SeriesInstanceUID = series.series_instance_uid
        refs = []
        for instance in series.instances:
            ref = Dataset()
            ref.ReferencedSOPClassUID = instance.sop_class_uid
            ref.ReferencedSOPInstanceUID = instance.sop_instance_uid
            refs.append(ref)
        item.ReferencedSOPSequence = Sequence(refs)
        series_items.append(item)
    evidence = Dataset()
    evidence.StudyInstanceUID = study.study_instance_uid
    evidence.ReferencedSeriesSequence = Sequence(series_items)
    return Sequence([evidence])


def _description(study: Study, report: ImagingReport) -> str:
    """The « Key Object Description » text: the exam, the act and one line per series (the ANS sample's lines)."""
    lines = [f"Examen : {study.description}"]
    if report.act is not None:
        lines.append(f"Acte = {report.act.display or report.act.code}")
    lines += [_series_line(s) for s in study.series]
    return "\n".join(lines)


def _series_line(series: Series) -> str:
    return f"Série-{series.series_instance_uid} : {series.modality} @ : {series.description}"


def _content(study: Study, report: ImagingReport) -> Sequence:
    items = []
    for series in study.series:
        for instance in series.instances:
            item = Dataset()
            item.RelationshipType = "CONTAINS"
            item.ValueType = "IMAGE" if instance.is_image else "COMPOSITE"
            ref = Dataset()
            ref.ReferencedSOPClassUID = instance.sop_class_uid
            ref.ReferencedSOPInstanceUID = instance.sop_instance_uid
            item.ReferencedSOPSequence = Sequence([ref])
            items.append(item)
    text = Dataset()
    text.RelationshipType = "CONTAINS"
    text.ValueType = "TEXT"
    text.ConceptNameCodeSequence = Sequence([_code("113012", "DCM", "Key Object Description")])
    text.TextValue = _description(study, report)
    items.append(text)
    return Sequence(items)


def _patient(ds: Dataset, report: ImagingReport) -> None:
    """The patient as the DMP knows them: the INS as PatientID with its OID, the birth name and first names."""
    p = report.header.patient
    if not p.ins_matricule or not p.ins_oid:
        raise ValueError("a KOS names the patient by their INS: the report carries none")
    ds.PatientName = f"{p.birth_family or ''}^{' '.join(p.given_names)}"
    ds.PatientID = p.ins_matricule
    ds.IssuerOfPatientID = INS_ISSUER
    ds.IssuerOfPatientIDQualifiersSequence = _issuer(Identifier(p.ins_oid))
    ds.PatientBirthDate = (p.birth_time or "")[:8]
    ds.PatientSex = {"M": "M", "F": "F"}.get(p.gender or "", "O")


def build_kos(
    study: Study,
    report: ImagingReport,
    ids: KosIds,
    *,
    wado_base: str,
    institution: str,
    now: datetime,
) -> Dataset:
    """The manifest of ``study`` for ``report``: every instance the PACS listed, each series retrievable from
    ``wado_base``. ``now`` is aware (the content date and the timezone offset)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID(KOS_SOP_CLASS)
    ds.file_meta.MediaStorageSOPInstanceUID = UID(ids.sop_instance_uid)
    # Implicit VR Little Endian, as the ANS samples: every DICOM receiver accepts it.
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    # UTF-8 rather than the ANS sample's Latin-1: a name may hold « Œ », which Latin-1 lacks.
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = KOS_SOP_CLASS
    ds.SOPInstanceUID = ids.sop_instance_uid
    ds.Modality = "KO"
    day, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.InstanceCreationDate, ds.InstanceCreationTime = day, time
    ds.ContentDate, ds.ContentTime = day, time
    ds.SeriesDate, ds.SeriesTime = day, time
    ds.TimezoneOffsetFromUTC = now.strftime("%z")
    ds.StudyDate, ds.StudyTime = study.study_date, study.study_time
    ds.StudyDescription = study.description
    ds.ReferringPhysicianName = study.referring_physician
    ds.StudyID = study.study_id
    ds.AccessionNumber = ""
    ds.Manufacturer = "OpenSégur"
    ds.InstitutionName = institution
    ds.ReferencedPerformedProcedureStepSequence = Sequence()
    _patient(ds, report)
    ds.StudyInstanceUID = study.study_instance_uid
    ds.SeriesInstanceUID = ids.series_instance_uid
    ds.SeriesNumber = MANIFEST_SERIES_NUMBER
    ds.InstanceNumber = 1
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = Sequence([_code("113030", "DCM", "Manifest")])
    ds.ContinuityOfContent = "SEPARATE"
    template = Dataset()
    template.MappingResource, template.TemplateIdentifier = "DCMR", "2010"
    ds.ContentTemplateSequence = Sequence([template])
    ds.ReferencedRequestSequence = Sequence([_request(report)])
    ds.CurrentRequestedProcedureEvidenceSequence = _evidence(study, wado_base)
    ds.ContentSequence = _content(study, report)
    return ds


def kos_bytes(ds: Dataset) -> bytes:
    """The manifest as a DICOM Part 10 file: what the DMP stores (mimeType application/dicom)."""
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()
