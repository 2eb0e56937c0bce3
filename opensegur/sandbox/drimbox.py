"""A remote DRIMbox: the DRIMbox of another hospital, for the demo and for other editors' CI.

It does what a DRIMbox source does for the exams of the demo DMP's imaging report (the ANS example CR d'imagerie,
a head CT): its KOS manifest is published in the sandbox DMP beside the report, naming this DRIMbox's WADO-RS
address, and the series are served as a real source serves them — a Pro Santé Connect bearer token, introspected
at the sandbox PSC, and a ``KOS-SOPInstanceUID`` naming a manifest it published that covers the series; anything
else is refused as the platform's own source refuses it (401, 404, 406).

The images are pydicom's CT test image (``CT_small.dcm``, distributed with pydicom under its MIT licence),
renamed to the exam and the patient: two series of four instances, made when first asked for."""

from __future__ import annotations

import hashlib
import io
import pathlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any

import pydicom
from fastapi import APIRouter, Header, HTTPException, Path
from fastapi.responses import Response, StreamingResponse
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import UID

from opensegur.content.xds_metadata import document_metadata
from opensegur.imaging.kos import KosIds, build_kos, kos_bytes
from opensegur.imaging.report import ImagingReport, read_imaging_report
from opensegur.imaging.study import Instance, Series, Study
from opensegur.imaging.uids import UID_MAX, UID_PATTERN
from opensegur.imaging.wado import NotAcceptable, accepted_transfer_syntaxes, multipart_dicom
from opensegur.imaging.xdsi import kos_metadata
from opensegur.sandbox.dmp.patients import DmpPatient, DmpStatus
from opensegur.sandbox.dmp.seed import DEMO_DOCUMENTS, IMAGING_REPORT, demo_file, register_alone
from opensegur.sandbox.dmp.store import Caller, DmpStore
from opensegur.sandbox.psc import PscSandbox
from opensegur.security.drimbox_directory import TrustedDrimbox, sign_directory
from opensegur.security.pki import TestPki

__all__ = ["RemoteDrimbox", "create_drimbox_router", "publish_demo_exams"]

INSTITUTION = "CH démo distant (DRIMbox du bac à sable)"
_OID_ROOT = "1.2.250.1.999.71"  # the remote DRIMbox's arc for the UIDs it makes
_SERIES, _PER_SERIES = 2, 4
_PUBLISHER = Caller("SANDBOX-DRIMBOX", INSTITUTION, "SANDBOX", "INDIRECTE", "normal", "")


def _series_description(index: int) -> str:
    return f"Crâne — série {index + 1}"


def _uid(*parts: str) -> str:
    number = int(hashlib.sha256("/".join(parts).encode()).hexdigest()[:15], 16)
    return f"{_OID_ROOT}.{number}"


@dataclass(frozen=True)
class _Exam:
    study_instance_uid: str
    patient_id: str  # the INS, as the images carry it
    accession: str
    series: tuple[str, ...]


class RemoteDrimbox:
    def __init__(self, base: str, psc: PscSandbox) -> None:
        self.wado = f"{base.rstrip('/')}/drimbox/dicom-web"
        self.psc = psc
        self._exams: dict[str, _Exam] = {}  # by manifest SOP Instance UID
        self._template: bytes | None = None

    def endpoints(self) -> dict[str, Any]:
        return {"wado": self.wado, "institution": INSTITUTION}

    def write_directory(self, path: pathlib.Path, pki: TestPki) -> None:
        """The sandbox's list of trusted DRIMboxes — this one —, signed by its PKI as the ANS signs the national
        list: what the demo platform's consumer checks before asking for images."""
        entry = TrustedDrimbox("SANDBOX-DRIMBOX", self.wado, "ANS (bac à sable)")
        path.parent.mkdir(parents=True, exist_ok=True)
        signed = sign_directory([entry], pki.signing_key.read_bytes(), [pki.signing_cert.read_bytes()])
        path.write_bytes(signed)

    # ---- the images ---------------------------------------------------------------------------------------------

    def _template_bytes(self) -> bytes:
        if self._template is None:
            path = get_testdata_file("CT_small.dcm")
            assert path is not None
            self._template = pathlib.Path(path).read_bytes()
        return self._template

    def _image(self, exam: _Exam, series_index: int, number: int) -> Dataset:
        # Read afresh each time: a deep copy of a pydicom dataset costs ten times more than parsing 40 KB.
        ds = pydicom.dcmread(io.BytesIO(self._template_bytes()))
        series = exam.series[series_index]
        ds.SOPInstanceUID = _uid(series, str(number))
        ds.file_meta.MediaStorageSOPInstanceUID = UID(ds.SOPInstanceUID)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = exam.study_instance_uid, series
        ds.PatientID, ds.AccessionNumber = exam.patient_id, exam.accession
        ds.SeriesNumber, ds.InstanceNumber = series_index + 1, number
        ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: the template's Latin-1 has no « — »
        ds.SeriesDescription = _series_description(series_index)
        return ds

    def _study(self, exam: _Exam) -> Study:
        """The exam as a PACS's C-FIND would describe it, the images' own attributes taken from the template once
        (not from eight images made for the purpose: this runs for every demo patient at start-up)."""
        header = pydicom.dcmread(io.BytesIO(self._template_bytes()), stop_before_pixels=True)
        series = [
            Series(
                uid,
                str(header.Modality),
                index + 1,
                _series_description(index),
                [Instance(str(header.SOPClassUID), _uid(uid, str(n)), n) for n in range(1, _PER_SERIES + 1)],
            )
            for index, uid in enumerate(exam.series)
        ]
        return Study(
            exam.study_instance_uid,
            exam.patient_id,
            exam.accession,
            str(header.get("StudyDate", "")),
            str(header.get("StudyTime", "")),
            str(header.get("StudyDescription", "")),
            str(header.get("ReferringPhysicianName", "")),
            str(header.get("StudyID", "")),
            series,
        )

    def series_instances(self, kos: str, study: str, series: str) -> list[bytes] | None:
        """The instances of ``series`` when manifest ``kos`` covers it, as Part 10 files; else None."""
        exam = self._exams.get(kos)
        if exam is None or exam.study_instance_uid != study or series not in exam.series:
            return None
        index = exam.series.index(series)
        out = []
        for number in range(1, _PER_SERIES + 1):
            buffer = io.BytesIO()
            self._image(exam, index, number).save_as(buffer, enforce_file_format=True)
            out.append(buffer.getvalue())
        return out

    # ---- the manifests ------------------------------------------------------------------------------------------

    def publish(self, store: DmpStore, patient: DmpPatient, report: ImagingReport, when: datetime) -> str:
        """The manifest of the exam ``report`` reports on, registered once in ``patient``'s DMP; its uniqueId. The
        exam is known again to this DRIMbox at each start, which keeps its exams in memory only."""
        accession = report.accession.extension if report.accession and report.accession.extension else ""
        study_uid = _uid(patient.matricule, report.study_instance_uid)
        exam = _Exam(
            study_uid, patient.matricule, accession, tuple(_uid(study_uid, str(s)) for s in range(_SERIES))
        )
        ids = KosIds(_uid(study_uid, "kos"), _uid(study_uid, "kos-series"))
        self._exams[ids.sop_instance_uid] = exam
        if store.find_entries(unique_ids=[ids.sop_instance_uid]):
            return ids.sop_instance_uid
        # The report as the images' hospital would have published it, under the patient's INS and this study.
        report = report.about(study_uid, patient.matricule, patient.oid)
        study = self._study(exam)
        content = kos_bytes(
            build_kos(study, report, ids, wado_base=self.wado, institution=INSTITUTION, now=when.astimezone())
        )
        entry = kos_metadata(
            document_metadata(report.header, ipp=None, ipp_authority_oid=None, size=0, hash_sha1=""),
            report,
            study,
            ids.sop_instance_uid,
            content,
        )
        register_alone(
            store, patient, entry, content, when, set_unique_id=_uid(study_uid, "set"), source_id=_OID_ROOT,
            caller=_PUBLISHER, content_type_code=entry.class_code,
        )  # fmt: skip
        return ids.sop_instance_uid


def publish_demo_exams(
    drimbox: RemoteDrimbox, store: DmpStore, patients: Sequence[DmpPatient], now: datetime
) -> list[str]:
    """At each start: the manifest of the demo imaging report's exam for each open DMP of ``patients``, registered
    once in the DMP and known again to the remote DRIMbox, which keeps its exams in memory only."""
    age = next(days for name, days, _cls in DEMO_DOCUMENTS if name == IMAGING_REPORT)
    report = read_imaging_report(demo_file(IMAGING_REPORT))
    return [
        drimbox.publish(store, p, report, now - timedelta(days=age))
        for p in patients
        if p.status == DmpStatus.OUVERT
    ]


_BEARER = {"WWW-Authenticate": 'Bearer realm="drimbox"'}


def create_drimbox_router(drimbox: RemoteDrimbox) -> APIRouter:
    router = APIRouter(tags=["sandbox DRIMbox"])

    @router.get("/drimbox/dicom-web/studies/{study}/series/{series}")
    async def retrieve_series(
        study: Annotated[str, Path(pattern=UID_PATTERN, max_length=UID_MAX)],
        series: Annotated[str, Path(pattern=UID_PATTERN, max_length=UID_MAX)],
        kos: Annotated[str, Header(alias="KOS-SOPInstanceUID", max_length=64)] = "",
        accept: Annotated[str | None, Header(max_length=4000)] = None,
        authorization: Annotated[str, Header(max_length=8000)] = "",
    ) -> Response:
        scheme, _sep, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not drimbox.psc.introspect(token.strip()).get("active"):
            raise HTTPException(401, "Jeton Pro Santé Connect absent, inactif ou expiré", headers=_BEARER)
        try:
            accepted_transfer_syntaxes(accept)
        except NotAcceptable as exc:
            raise HTTPException(406, str(exc)) from exc
        instances = drimbox.series_instances(kos, study, series)
        if instances is None:
            raise HTTPException(404, "Série inconnue de ce DRIMbox ou non couverte par le manifeste")
        # CT_small is Explicit VR Little Endian: what every DICOM reader takes, whatever was preferred.
        content_type, body = multipart_dicom((data, "1.2.840.10008.1.2.1") for data in instances)
        return StreamingResponse(body, media_type=content_type, headers={"Cache-Control": "no-store"})

    return router
