"""Flow: the DRIMbox source publishes the manifest of an exam once its imaging report is in the DMP.

When the DMP has accepted a CR d'imagerie (LOINC 18748-4) sent by the RIS, a ``drimbox.publish`` job is queued in
the same transaction. The job asks the PACS which images the report's exam holds (C-FIND), checks that the PACS
and the report describe the same exam of the same patient, builds the KOS manifest — each series retrievable from
this DRIMbox's WADO-RS — and registers it in the DMP (ITI-41, XDS-I.b metadata) in the name of the site, as the
feed does. The manifest is kept (``ImagingManifest``) to be replaced or withdrawn, and to check the other
DRIMboxes' retrievals.

Exactly once: the manifest's UID is derived from the report's document, so a retry first asks the DMP whether the
manifest is there already. A PACS that does not answer, or that has no image of the exam yet (the report may
arrive before the last series), is retried later; a PACS that describes another exam or patient is not: the
manifest is refused with the reason, visible on the job.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.orm import Session

from opensegur.content.cda import CdaError, parse_cda
from opensegur.documents.metadata import DocumentMetadata, cx_of_type, metadata_from_dict
from opensegur.errors import RetryLater
from opensegur.flows.dmp_exchanges import DmpRejectedError, DmpUnavailableError
from opensegur.flows.dmp_feed import (
    DeliveryRow,
    DmpPort,
    DmpRequest,
    DocumentRow,
    patient_cx_of,
    structure_info,
)
from opensegur.flows.drimbox_ports import PacsPort, PacsQueryError, PacsUnavailable
from opensegur.flows.jobs import JobKind
from opensegur.flows.worker import Handler, PermanentError
from opensegur.imaging.kos import KosIds, build_kos, kos_bytes
from opensegur.imaging.report import IMAGING_REPORT_CODE, ImagingReportError, imaging_facts
from opensegur.imaging.study import Study, StudyError, study_from_matches
from opensegur.imaging.xdsi import ExamMismatch, check_exam, kos_metadata
from opensegur.store import jobs
from opensegur.store.db import Database
from opensegur.store.documents import document_with_content
from opensegur.store.models import Document, ImagingManifest, ImagingRejection, Job, Payload, utcnow

__all__ = [
    "DrimboxSource",
    "make_handlers",
    "request_manifest",
]

PARIS = ZoneInfo("Europe/Paris")
ARC_KOS, ARC_KOS_SERIES = 20, 21  # under the editor's oid_root, beside the REST intake's arcs


def request_manifest(s: Session, delivery: DeliveryRow, doc: DocumentRow) -> None:
    """The feed's delivery hook: an imaging report the DMP has just accepted queues its manifest (a corrected
    report, a new manifest replacing the exam's previous one); a report deleted from the DMP queues the
    withdrawal of its manifests."""
    if delivery.action == "delete":
        report = document_with_content(s, doc.structure_id, doc.unique_id)
        if report is None:
            return
        published = s.scalar(
            select(ImagingManifest.id).where(
                ImagingManifest.document_id == report.id, ImagingManifest.status == "published"
            )
        )
        if published is not None:
            jobs.enqueue(
                s,
                JobKind.DRIMBOX_WITHDRAW,
                f"{JobKind.DRIMBOX_WITHDRAW}:{report.id}",
                {"document_id": report.id},
                structure_id=doc.structure_id,
                patient_id=doc.patient_id,
            )
        return
    if doc.type_code != IMAGING_REPORT_CODE:
        return
    jobs.enqueue(
        s,
        JobKind.DRIMBOX_PUBLISH,
        f"{JobKind.DRIMBOX_PUBLISH}:{doc.id}",
        {"document_id": doc.id},
        structure_id=doc.structure_id,
        patient_id=doc.patient_id,
        max_attempts=12,  # images may reach the PACS some time after the report
    )


@dataclass(frozen=True)
class DrimboxSource:
    db: Database
    pacs: PacsPort
    dmp: DmpPort
    wado_base: str
    oid_root: str


@dataclass(frozen=True)
class _Report:
    document_id: int
    structure_id: int
    structure: dict[str, Any]
    patient_cx: str
    content: bytes
    entry: DocumentMetadata  # the report's own DMP entry, as the feed registered it
    stay_class: str | None
    institution: str


def _load(db: Database, document_id: int) -> _Report:
    with db.session() as s:
        doc = s.get_one(Document, document_id)
        stored = doc.context.get("metadata")
        if not stored or not doc.payload_sha256:
            raise PermanentError("Compte rendu sans contenu ni métadonnées DMP : rien à publier")
        info = structure_info(s, doc.structure_id)
        return _Report(
            doc.id,
            doc.structure_id,
            info,
            patient_cx_of(doc),
            s.get_one(Payload, doc.payload_sha256).data,
            metadata_from_dict(stored),
            doc.context.get("patient_class"),
            str(info["name"]),
        )


def _ipp(entry: DocumentMetadata) -> str | None:
    """The producer's patient number, from the entry's sourcePatientId when it is an IPP (…^PI)."""
    return cx_of_type((entry.source_patient_id or "",), "PI")


def _site_and_patient(db: Database, document_id: int) -> tuple[dict[str, Any], str]:
    """What a DMP call about the report's manifests needs: the site and the patient, not the report's content."""
    with db.session() as s:
        doc = s.get_one(Document, document_id)
        return structure_info(s, doc.structure_id), patient_cx_of(doc)


def _rejected(db: Database, study_uid: str) -> set[str]:
    """The exam's instances the PACS withdrew (IOCM): never in a manifest again."""
    with db.session() as s:
        return set(
            s.scalars(
                select(ImagingRejection.sop_instance_uid).where(
                    ImagingRejection.study_instance_uid == study_uid
                )
            )
        )


async def publish(
    source: DrimboxSource, document_id: int, attempt: int, now: datetime, revision: int | None = None
) -> dict[str, Any]:
    """The manifest of the report's exam in the DMP. ``revision``: a new manifest after an image change (the
    job's id, stable across its retries, tells it from the report's first one)."""
    report = await asyncio.to_thread(_load, source.db, document_id)
    try:
        root, header = parse_cda(report.content)
        facts = imaging_facts(root, header)
    except (CdaError, ImagingReportError) as exc:
        raise PermanentError(str(exc)) from exc
    try:
        matches = await asyncio.to_thread(source.pacs.find_instances, facts.study_instance_uid)
    except (PacsUnavailable, PacsQueryError) as exc:  # a PACS busy or restarting answers later
        raise RetryLater(str(exc)) from exc
    rejected = await asyncio.to_thread(_rejected, source.db, facts.study_instance_uid)
    kept = [m for m in matches if str(m.get("SOPInstanceUID", "")) not in rejected]
    if matches and not kept:
        # Every image of the exam was withdrawn by the PACS: so is the manifest.
        return {"rejected": len(rejected), **(await withdraw(source, document_id))}
    matches = kept
    if not matches:
        raise RetryLater(f"Le PACS n'a pas encore d'image de l'examen {facts.study_instance_uid}")
    try:
        study = study_from_matches(matches)
        check_exam(facts, study, _ipp(report.entry))
    except (StudyError, ExamMismatch) as exc:
        raise PermanentError(f"Manifeste non publié : {exc}") from exc
    suffix = f".{revision}" if revision is not None else ""
    ids = KosIds(
        f"{source.oid_root}.{ARC_KOS}.{report.document_id}{suffix}",
        f"{source.oid_root}.{ARC_KOS_SERIES}.{report.document_id}{suffix}",
    )
    try:
        if attempt > 1:
            # The previous attempt may have reached the DMP before failing: ask before sending again.
            existing = await source.dmp.find(report.structure, report.patient_cx, ids.sop_instance_uid)
            if existing is not None:
                await asyncio.to_thread(_record, source.db, report, ids, study, existing.entry_uuid)
                return {"manifest": ids.sop_instance_uid, "found": True}
        kos = kos_bytes(
            build_kos(study, facts, ids, wado_base=source.wado_base, institution=report.institution, now=now)
        )
        entry = kos_metadata(report.entry, facts, study, ids.sop_instance_uid, kos)
        # A corrected report: its manifest replaces the exam's previous one (RPLC), which the DMP deprecates.
        previous = await asyncio.to_thread(_previous, source.db, report, study.study_instance_uid, ids)
        replaces = await source.dmp.find(report.structure, report.patient_cx, previous) if previous else None
        request = DmpRequest(report.structure, entry, kos, report.stay_class, previous if replaces else None)
        outcome = await source.dmp.register(request, replaces)
    except DmpUnavailableError as exc:
        raise RetryLater(str(exc)) from exc
    except DmpRejectedError as exc:
        raise PermanentError(f"Le DMP a refusé le manifeste ({exc.code}) : {exc.message}") from exc
    await asyncio.to_thread(_record, source.db, report, ids, study, outcome.entry_uuid)
    return {"manifest": ids.sop_instance_uid, "series": len(study.series), "instances": study.instance_count}


def _record(db: Database, report: _Report, ids: KosIds, study: Study, entry_uuid: str | None) -> None:
    with db.session() as s:
        row = s.scalar(
            select(ImagingManifest).where(ImagingManifest.sop_instance_uid == ids.sop_instance_uid)
        )
        if row is None:
            row = ImagingManifest(
                document_id=report.document_id,
                structure_id=report.structure_id,
                sop_instance_uid=ids.sop_instance_uid,
            )
            s.add(row)
        row.study_instance_uid = study.study_instance_uid
        row.series_uids = [x.series_instance_uid for x in study.series]
        row.instances = study.instance_count
        row.entry_uuid = entry_uuid
        row.status = "published"
        row.published_at = utcnow()
        s.flush()
        for old in s.scalars(
            select(ImagingManifest).where(
                ImagingManifest.structure_id == report.structure_id,
                ImagingManifest.study_instance_uid == study.study_instance_uid,
                ImagingManifest.status == "published",
                ImagingManifest.id != row.id,
            )
        ):
            old.status = "replaced"


def _previous(db: Database, report: _Report, study_uid: str, ids: KosIds) -> str | None:
    """The manifest this site published last for the exam, if another than ``ids``'s."""
    with db.session() as s:
        return s.scalar(
            select(ImagingManifest.sop_instance_uid)
            .where(
                ImagingManifest.structure_id == report.structure_id,
                ImagingManifest.study_instance_uid == study_uid,
                ImagingManifest.status == "published",
                ImagingManifest.sop_instance_uid != ids.sop_instance_uid,
            )
            .order_by(ImagingManifest.id.desc())
            .limit(1)
        )


async def withdraw(source: DrimboxSource, document_id: int) -> dict[str, Any]:
    """The manifests of a report the DMP no longer holds are deleted from it too (ITI-57, as the feed deletes):
    an exam whose report is gone is not offered to other DRIMboxes."""
    structure, patient_cx = await asyncio.to_thread(_site_and_patient, source.db, document_id)
    sops = await asyncio.to_thread(_published_for, source.db, document_id)
    for sop in sops:
        try:
            target = await source.dmp.find(structure, patient_cx, sop)
            if target is not None:
                await source.dmp.delete(structure, target)
        except DmpUnavailableError as exc:
            raise RetryLater(str(exc)) from exc
        except DmpRejectedError as exc:
            raise PermanentError(
                f"Le DMP a refusé le retrait du manifeste ({exc.code}) : {exc.message}"
            ) from exc
        await asyncio.to_thread(_withdrawn, source.db, sop)
    return {"withdrawn": sops}


def _published_for(db: Database, document_id: int) -> list[str]:
    with db.session() as s:
        return list(
            s.scalars(
                select(ImagingManifest.sop_instance_uid).where(
                    ImagingManifest.document_id == document_id, ImagingManifest.status == "published"
                )
            )
        )


def _withdrawn(db: Database, sop: str) -> None:
    with db.session() as s:
        row = s.scalars(select(ImagingManifest).where(ImagingManifest.sop_instance_uid == sop)).one()
        row.status = "withdrawn"


def make_handlers(source: DrimboxSource) -> dict[str, Handler]:
    async def publish_job(job: Job) -> dict[str, Any]:
        # The manifest's dates in the hospital's zone, as the ANS samples (+0100 / +0200).
        revision = job.id if job.args.get("change") else None  # an image change (IOCM): a new manifest
        return await publish(
            source, int(job.args["document_id"]), job.attempts, utcnow().astimezone(PARIS), revision
        )

    async def withdraw_job(job: Job) -> dict[str, Any]:
        return await withdraw(source, int(job.args["document_id"]))

    return {JobKind.DRIMBOX_PUBLISH: publish_job, JobKind.DRIMBOX_WITHDRAW: withdraw_job}
