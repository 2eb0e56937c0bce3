"""The image cache of the DRIMbox consumer: the exams retrieved from other hospitals' DRIMboxes, on disk beside
the database, one directory per KOS manifest, with a row each (``ImagingFetch``) that says how far the retrieval
went.

What a retrieval writes goes to a directory of its own under ``.partiel/`` and is moved into place in one rename
once every instance of the manifest is there: a page or a viewer reads only complete exams, never one a failed
or interrupted transfer left half written. The cache is bounded in size and in age: past either bound the exams
looked at least recently go first (``purge``)."""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import IO

from sqlalchemy import func, select

from opensegur.errors import OpenSegurError
from opensegur.store.db import Database
from opensegur.store.models import ImagingFetch, utcnow

__all__ = [
    "FETCH_TRANSITIONS",
    "FetchEvent",
    "FetchStatus",
    "FetchView",
    "ImageCache",
    "InvalidFetchTransition",
    "OtherPatient",
]


STALE_AFTER = timedelta(minutes=5)  # a source that sends nothing this long has long timed out the HTTP client


class FetchStatus(StrEnum):
    FETCHING = "en_cours"
    COMPLETE = "complet"
    FAILED = "echec"

    @property
    def label(self) -> str:
        return _LABELS[self]


_LABELS = {
    FetchStatus.FETCHING: "Récupération en cours",
    FetchStatus.COMPLETE: "Images disponibles",
    FetchStatus.FAILED: "Récupération en échec",
}


class FetchEvent(StrEnum):
    START = "start"  # a professional asks for the exam
    COMPLETE = "complete"  # every instance of the manifest is in the cache
    FAIL = "fail"  # refused, or out of attempts; also a retrieval the process stopped in the middle of


class InvalidFetchTransition(OpenSegurError):
    pass


class OtherPatient(OpenSegurError):
    """The exam is in the cache under another patient of this site: never shown under this one."""


FETCH_TRANSITIONS: Mapping[tuple[FetchStatus, FetchEvent], FetchStatus] = MappingProxyType(
    {
        (FetchStatus.FETCHING, FetchEvent.COMPLETE): FetchStatus.COMPLETE,
        (FetchStatus.FETCHING, FetchEvent.FAIL): FetchStatus.FAILED,
        (FetchStatus.FAILED, FetchEvent.START): FetchStatus.FETCHING,
    }
)


def _next(status: str, event: FetchEvent) -> FetchStatus:
    after = FETCH_TRANSITIONS.get((FetchStatus(status), event))
    if after is None:
        raise InvalidFetchTransition(f"{status} → {event}")
    return after


@dataclass(frozen=True)
class FetchView:
    """What a page shows of a retrieval."""

    id: int
    patient_id: int
    kos_sop_instance_uid: str
    study_instance_uid: str | None
    status: FetchStatus
    instances_expected: int
    instances_done: int
    bytes: int
    error: str | None
    started_at: datetime
    completed_at: datetime | None

    @classmethod
    def of(cls, row: ImagingFetch) -> FetchView:
        return cls(
            row.id,
            row.patient_id,
            row.kos_sop_instance_uid,
            row.study_instance_uid,
            FetchStatus(row.status),
            row.instances_expected,
            row.instances_done,
            row.bytes,
            row.error,
            row.started_at,
            row.completed_at,
        )


class ImageCache:
    def __init__(self, db: Database, root: Path, *, max_bytes: int, max_age: timedelta) -> None:
        self.db = db
        self.root = root
        self.max_bytes = max_bytes
        self.max_age = max_age

    def _partial(self, kos: str) -> Path:
        return self.root / ".partiel" / kos

    def exam_dir(self, kos: str) -> Path:
        return self.root / kos

    # ---- the lifecycle ----------------------------------------------------------------------------------------

    def start(self, patient_id: int, kos: str, requested_by: str) -> tuple[FetchView, bool]:
        """The retrieval of manifest ``kos``, and whether the caller should run it: False when the exam is
        already complete (it is marked looked at) or another retrieval of it is under way. Raises OtherPatient
        when the exam is complete or being retrieved for another patient; a failed one is started over for this
        patient, whose INS the manifest will be checked against."""
        self.expire_stale()
        with self.db.session() as s:
            row = s.scalar(
                select(ImagingFetch).where(ImagingFetch.kos_sop_instance_uid == kos).with_for_update()
            )
            if row is None:
                row = ImagingFetch(
                    patient_id=patient_id,
                    kos_sop_instance_uid=kos,
                    status=FetchStatus.FETCHING,
                    requested_by=requested_by,
                )
                s.add(row)
            elif row.status == FetchStatus.FAILED:
                row.patient_id = patient_id
                row.status = _next(row.status, FetchEvent.START)
                row.error, row.requested_by, row.started_at = None, requested_by, utcnow()
                row.updated_at = row.started_at
                row.instances_done, row.bytes, row.attempts = 0, 0, 0
            elif row.patient_id != patient_id:
                raise OtherPatient(kos)
            else:
                row.last_access_at = utcnow()
                s.flush()
                return FetchView.of(row), False
            s.flush()
            view = FetchView.of(row)
        shutil.rmtree(self._partial(kos), ignore_errors=True)
        return view, True

    def describe(self, fetch_id: int, study: str, source: str, expected: int) -> None:
        """What the manifest announced, once read."""
        with self.db.session() as s:
            row = s.get_one(ImagingFetch, fetch_id)
            row.study_instance_uid, row.source, row.instances_expected = study, source[:200], expected

    def attempt(self, fetch_id: int) -> int:
        """A new attempt begins; its number."""
        with self.db.session() as s:
            row = s.get_one(ImagingFetch, fetch_id)
            row.attempts += 1
            row.instances_done, row.bytes, row.updated_at = 0, 0, utcnow()
            return row.attempts

    def write(self, kos: str, series: str, sop: str, body: IO[bytes]) -> int:
        """One instance into the retrieval's partial directory; its size."""
        folder = self._partial(kos) / series
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{sop}.dcm"
        with target.open("wb") as out:
            shutil.copyfileobj(body, out, 1024 * 1024)
        return target.stat().st_size

    def progress(self, fetch_id: int, instances_done: int, size: int) -> None:
        """How far the retrieval's current attempt went: what the page shows, and the sign it is alive."""
        with self.db.session() as s:
            row = s.get_one(ImagingFetch, fetch_id)
            row.instances_done, row.bytes, row.updated_at = instances_done, size, utcnow()

    def complete(self, fetch_id: int, kos: str) -> None:
        """The partial directory becomes the exam's, in one rename; then the cache is brought within bounds."""
        final = self.exam_dir(kos)
        shutil.rmtree(final, ignore_errors=True)
        self._partial(kos).rename(final)
        with self.db.session() as s:
            row = s.get_one(ImagingFetch, fetch_id)
            row.status = _next(row.status, FetchEvent.COMPLETE)
            row.completed_at = row.last_access_at = utcnow()
        self.purge(keep=fetch_id)

    def fail(self, fetch_id: int, kos: str, reason: str) -> None:
        shutil.rmtree(self._partial(kos), ignore_errors=True)
        with self.db.session() as s:
            row = s.get_one(ImagingFetch, fetch_id)
            row.status = _next(row.status, FetchEvent.FAIL)
            row.error = reason[:500]

    def expire_stale(self, now: datetime | None = None) -> int:
        """A retrieval that made no progress for ``STALE_AFTER`` failed: the process running it stopped, and the
        professional's token it ran with went with it. Asking again starts it over. Judged on progress rather than
        at start-up, since another serving process may be running its own retrievals."""
        bound = (now or utcnow()) - STALE_AFTER
        with self.db.session() as s:
            rows = list(
                s.scalars(
                    select(ImagingFetch).where(
                        ImagingFetch.status == FetchStatus.FETCHING, ImagingFetch.updated_at < bound
                    )
                )
            )
            for row in rows:
                row.status = _next(row.status, FetchEvent.FAIL)
                row.error = "Récupération interrompue (arrêt de la plateforme) : relancez-la"
            stale = [r.kos_sop_instance_uid for r in rows]
        for kos in stale:
            shutil.rmtree(self._partial(kos), ignore_errors=True)
        return len(stale)

    # ---- reading ----------------------------------------------------------------------------------------------

    def for_patient(self, patient_id: int) -> dict[str, FetchView]:
        """The patient's retrievals, by manifest."""
        self.expire_stale()
        with self.db.session() as s:
            rows = s.scalars(select(ImagingFetch).where(ImagingFetch.patient_id == patient_id))
            return {r.kos_sop_instance_uid: FetchView.of(r) for r in rows}

    def get(self, fetch_id: int) -> FetchView | None:
        with self.db.session() as s:
            row = s.get(ImagingFetch, fetch_id)
            return FetchView.of(row) if row is not None else None

    def complete_study(self, study_instance_uid: str) -> FetchView | None:
        """The latest complete retrieval of the exam ``study_instance_uid``: what the viewer shows."""
        with self.db.session() as s:
            row = s.scalar(
                select(ImagingFetch)
                .where(
                    ImagingFetch.study_instance_uid == study_instance_uid,
                    ImagingFetch.status == FetchStatus.COMPLETE,
                )
                .order_by(ImagingFetch.completed_at.desc())
                .limit(1)
            )
            return FetchView.of(row) if row is not None else None

    def instances(self, kos: str, series: str | None = None) -> list[Path]:
        """The files of a complete exam, series by series; or of one of its series."""
        folder = self.exam_dir(kos)
        return sorted(folder.glob(f"{series or '*'}/*.dcm")) if folder.is_dir() else []

    def instance(self, kos: str, series: str, sop: str) -> Path | None:
        """One file of a complete exam (``series`` and ``sop`` are UIDs: digits and dots only)."""
        path = self.exam_dir(kos) / series / f"{sop}.dcm"
        return path if path.is_file() else None

    # ---- bounds -----------------------------------------------------------------------------------------------

    def purge(self, keep: int | None = None, now: datetime | None = None) -> list[str]:
        """Complete exams past ``max_age`` since last looked at, then the least recently looked at until the
        cache is within ``max_bytes`` (``keep`` stays, the exam just retrieved); the manifests purged."""
        now = now or utcnow()
        purged: list[str] = []
        with self.db.session() as s:
            complete = list(
                s.scalars(
                    select(ImagingFetch)
                    .where(ImagingFetch.status == FetchStatus.COMPLETE)
                    .order_by(ImagingFetch.last_access_at)
                )
            )
            total = (
                s.scalar(
                    select(func.sum(ImagingFetch.bytes)).where(ImagingFetch.status == FetchStatus.COMPLETE)
                )
                or 0
            )
            for row in complete:
                if row.id == keep:
                    continue
                seen = (
                    row.last_access_at
                    if row.last_access_at.tzinfo
                    else row.last_access_at.replace(tzinfo=now.tzinfo)
                )
                if now - seen <= self.max_age and total <= self.max_bytes:
                    continue
                total -= row.bytes
                purged.append(row.kos_sop_instance_uid)
                s.delete(row)
        for kos in purged:
            shutil.rmtree(self.exam_dir(kos), ignore_errors=True)
        return purged
