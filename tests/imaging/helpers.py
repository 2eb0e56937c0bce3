"""An exam as a PACS answers a C-FIND at IMAGE level for the ANS RIS examples' report (study
1.2.250.1.213.4.5.2.1.102, accession ACN102, PAT-TROIS): two MR series and a structured report."""

from __future__ import annotations

from pathlib import Path

from pydicom.dataset import Dataset

RIS = Path("/work/shared/hl7v2-examples/Vague 2/RIS")
INITIAL = RIS / "transmission_initiale_cr_imagerie.xml"
STUDY_UID = "1.2.250.1.213.4.5.2.1.102"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
PATIENT_INS = "279035121518989"


def match(
    series: str, number: int, modality: str, sop: str, instance: int, sop_class: str = MR_IMAGE, **more: str
) -> Dataset:
    ds = Dataset()
    ds.StudyInstanceUID = more.get("study", STUDY_UID)
    ds.PatientID = more.get("patient", PATIENT_INS)
    ds.AccessionNumber = more.get("accession", "ACN102")
    ds.StudyDate, ds.StudyTime = "20210108", "102500"
    ds.StudyDescription = "IRM du genou"
    ds.StudyID = "102"
    ds.ReferringPhysicianName = "DUPONT^Jean"
    ds.SeriesInstanceUID = series
    ds.SeriesNumber = number
    ds.SeriesDescription = {"MR": "Genou sagittal", "SR": "Mesures"}.get(modality, "")
    ds.Modality = modality
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop
    ds.InstanceNumber = instance
    return ds


def exam_matches(**more: str) -> list[Dataset]:
    """Out of order, as a PACS may answer."""
    return [
        match("1.2.250.1.999.5.2", 2, "MR", "1.2.250.1.999.6.22", 2, **more),
        match("1.2.250.1.999.5.1", 1, "MR", "1.2.250.1.999.6.12", 2, **more),
        match("1.2.250.1.999.5.1", 1, "MR", "1.2.250.1.999.6.11", 1, **more),
        match("1.2.250.1.999.5.2", 2, "MR", "1.2.250.1.999.6.21", 1, **more),
        match("1.2.250.1.999.5.3", 3, "SR", "1.2.250.1.999.6.31", 1, BASIC_TEXT_SR, **more),
    ]


# The Accept header of the ANS validator's sample (DRIM-M_DATA, « Requête WADO-RS - Série »), in its order.
ANS_ACCEPT = ", ".join(
    f'multipart/related; type="application/dicom";transfer-syntax={ts};q={q}'
    for ts, q in [
        ("1.2.840.10008.1.2.4.70", "0.9"),
        ("1.2.840.10008.1.2.4.80", "0.8"),
        ("1.2.840.10008.1.2.4.81", "0.8"),
        ("1.2.840.10008.1.2.4.90", "0.7"),
        ("1.2.840.10008.1.2.4.91", "0.6"),
        ("1.2.840.10008.1.2.4.50", "0.5"),
        ("1.2.840.10008.1.2.1", "0.4"),
    ]
)
