"""An exam as the PACS describes it: the study, its series and their instances, from a C-FIND at IMAGE level.

Pure data: the DIMSE association that asks the PACS is the connector's business; this module only groups what it
answered, so that the KOS and the XDS-I.b metadata are built from one description."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from pydicom.dataset import Dataset
from pydicom.uid import UID

from opensegur.errors import OpenSegurError

__all__ = ["Instance", "Series", "Study", "StudyError", "study_from_matches"]


class StudyError(OpenSegurError):
    """The PACS's answer does not describe one exam: the French reason."""


@dataclass(frozen=True)
class Instance:
    sop_class_uid: str
    sop_instance_uid: str
    instance_number: int | None = None
    number_of_frames: int | None = None

    @property
    def is_image(self) -> bool:
        """An image (KOS ValueType IMAGE) rather than another composite object (a report, a KOS: COMPOSITE)."""
        return "Image Storage" in UID(self.sop_class_uid).name


@dataclass
class Series:
    series_instance_uid: str
    modality: str
    series_number: int | None = None
    description: str = ""
    instances: list[Instance] = field(default_factory=list)


@dataclass
class Study:
    study_instance_uid: str
    patient_id: str  # PatientID as the PACS knows it (an IPP, or the INS)
    accession_number: str = ""
    study_date: str = ""  # DICOM DA, YYYYMMDD
    study_time: str = ""
    description: str = ""
    referring_physician: str = ""
    study_id: str = ""
    series: list[Series] = field(default_factory=list)

    @property
    def modalities(self) -> list[str]:
        """The acquisition modalities of the exam, in series order, each once (KO, PR and SR are not acquisitions)."""
        found = [s.modality for s in self.series if s.modality and s.modality not in ("KO", "PR", "SR")]
        return list(dict.fromkeys(found))

    @property
    def instance_count(self) -> int:
        return sum(len(s.instances) for s in self.series)


def _int(value: object) -> int | None:
    try:
        return int(str(value)) if value not in (None, "") else None
    except ValueError:
        return None


def study_from_matches(matches: Iterable[Dataset]) -> Study:
    """The exam described by the IMAGE-level matches of one study, series and instances in their numbers' order.

    Raises StudyError when the matches span several studies or patients, or name no instance."""
    study: Study | None = None
    by_series: dict[str, Series] = {}
    for m in matches:
        uid = str(m.get("StudyInstanceUID", ""))
        patient = str(m.get("PatientID", ""))
        if study is None:
            study = Study(
                study_instance_uid=uid,
                patient_id=patient,
                accession_number=str(m.get("AccessionNumber", "")),
                study_date=str(m.get("StudyDate", "")),
                study_time=str(m.get("StudyTime", "")),
                description=str(m.get("StudyDescription", "")),
                referring_physician=str(m.get("ReferringPhysicianName", "")),
                study_id=str(m.get("StudyID", "")),
            )
        elif uid != study.study_instance_uid:
            raise StudyError(f"Le PACS a répondu pour deux examens ({study.study_instance_uid} et {uid})")
        elif patient != study.patient_id:
            raise StudyError("Le PACS a répondu pour deux patients différents dans un même examen")
        series_uid = str(m.get("SeriesInstanceUID", ""))
        sop_uid = str(m.get("SOPInstanceUID", ""))
        if not series_uid or not sop_uid:
            raise StudyError("Réponse du PACS sans SeriesInstanceUID ou SOPInstanceUID")
        series = by_series.get(series_uid)
        if series is None:
            series = by_series[series_uid] = Series(
                series_uid,
                str(m.get("Modality", "")),
                _int(m.get("SeriesNumber")),
                str(m.get("SeriesDescription", "")),
            )
        series.instances.append(
            Instance(
                str(m.get("SOPClassUID", "")),
                sop_uid,
                _int(m.get("InstanceNumber")),
                _int(m.get("NumberOfFrames")),
            )
        )
    if study is None:
        raise StudyError("Le PACS ne connaît aucune image de cet examen")
    for series in by_series.values():
        series.instances.sort(key=lambda i: (i.instance_number is None, i.instance_number or 0))
    study.series = sorted(by_series.values(), key=lambda s: (s.series_number is None, s.series_number or 0))
    return study
