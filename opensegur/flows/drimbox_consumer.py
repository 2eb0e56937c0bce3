"""Flow: the DRIMbox consumer. For a patient, the imaging exams other hospitals published in the DMP (their KOS
manifests, ITI-18), and, when a professional asks, the exam's images brought from the source DRIMbox into this
site's image cache (ITI-43 for the manifest, then WADO-RS per series with the professional's Pro Santé Connect
token).

A retrieval runs in the serving process, in the background of the page that asked for it, because it needs the
professional's PSC token, which this platform never writes down: a retrieval the process stops in the middle of
fails once it makes no more progress (``ImageCache.expire_stale``) and the professional asks again. Within a
run, a source that does not answer or stops mid-transfer is asked again (``ATTEMPTS``) before the retrieval
fails.

What is checked before anything is kept:
- the manifest names this patient's INS: never another patient's images under this patient;
- every DRIMbox it sends us to is in the ANS's signed list of DRIMboxes (``security.drimbox_directory``);
- every instance received is one the manifest lists, of its study and series;
- every instance the manifest lists arrived: only then is the exam complete (``drimbox_cache``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, time
from time import monotonic
from urllib.parse import urlsplit

import pydicom
from pydicom.errors import InvalidDicomError

from opensegur.content.jdv import load_value_set
from opensegur.documents.metadata import Coded, DocumentMetadata, cx_of_type, xon_name
from opensegur.errors import OpenSegurError
from opensegur.flows.dmp_consult import Consulter, DmpConsultPort
from opensegur.flows.dmp_exchanges import DmpRejectedError, DmpUnavailableError
from opensegur.flows.drimbox_cache import FetchView, ImageCache, OtherPatient
from opensegur.flows.drimbox_ports import RemoteDrimboxPort, RemoteRefused, RemoteUnavailable
from opensegur.imaging.manifest import Manifest, ManifestError, SeriesRef, read_manifest
from opensegur.imaging.wado import Part
from opensegur.imaging.xdsi import ACCESSION, JDV_MODALITIES, JDV_REGIONS, KOS_TYPE, STUDY
from opensegur.security.drimbox_directory import DirectoryError, DrimboxDirectory, TrustedDrimbox

__all__ = [
    "ATTEMPTS",
    "DirectoryLoader",
    "DrimboxConsumer",
    "Exam",
    "FetchRefused",
    "ImagingSearch",
    "PatientRef",
    "find_exams",
]

log = logging.getLogger(__name__)

ATTEMPTS = 3
PROGRESS_EVERY_S = 0.5


class FetchRefused(OpenSegurError):
    """The exam cannot be retrieved as asked: the French reason, shown to the professional."""


@dataclass(frozen=True)
class ImagingSearch:
    """The professional's criteria. The modality is asked of the DMP (eventCodeList); the region, which shares
    that list and would be OR-ed with it, the accession number and the study filter the answer here."""

    modality: str = ""  # JDV_ModaliteAcquisition_CISIS code, e.g. MR
    region: str = ""  # JDV_RegionAnatomique_CISIS code
    act_from: date | None = None
    act_to: date | None = None
    accession: str = ""
    study: str = ""  # the exam's Study Instance UID, as a report names it (documentationOf/serviceEvent/id)


@dataclass(frozen=True)
class Exam:
    """One manifest of the DMP, as the imaging tab lists it."""

    entry: DocumentMetadata
    accession: str | None
    study_instance_uid: str | None
    modalities: tuple[Coded, ...]
    regions: tuple[Coded, ...]

    @property
    def kos(self) -> str:
        return self.entry.unique_id

    @property
    def institutions(self) -> list[str]:
        """The authors' organisations, by name (XON.1): the hospital that did the exam."""
        names = [xon_name(xon) for author in self.entry.authors for xon in author.institutions]
        return list(dict.fromkeys(n for n in names if n))


def _exam(entry: DocumentMetadata) -> Exam:
    return Exam(
        entry,
        cx_of_type(entry.reference_ids, ACCESSION),
        cx_of_type(entry.reference_ids, STUDY),
        tuple(c for c in entry.event_codes if c.scheme == JDV_MODALITIES),
        tuple(c for c in entry.event_codes if c.scheme == JDV_REGIONS),
    )


async def find_exams(
    dmp: DmpConsultPort, consulter: Consulter, patient_cx: str, search: ImagingSearch
) -> list[Exam]:
    """The patient's imaging manifests in the DMP matching ``search``, the latest act first."""
    modality = None
    if search.modality:
        known = load_value_set(JDV_MODALITIES).get(search.modality)
        if known is None:
            raise FetchRefused(f"Modalité inconnue du JDV des modalités d'acquisition : {search.modality}")
        modality = Coded(known.code, JDV_MODALITIES, known.display)
    found = await dmp.find_documents(
        consulter,
        patient_cx,
        since=datetime.combine(search.act_from, time.min) if search.act_from else None,
        until=datetime.combine(search.act_to, time.max) if search.act_to else None,
        type_codes=[KOS_TYPE],
        event_codes=[modality] if modality else None,
    )
    exams = [_exam(d) for d in found if d.type_code.code == KOS_TYPE.code]
    if search.region:
        exams = [e for e in exams if any(r.code == search.region for r in e.regions)]
    if search.accession:
        exams = [e for e in exams if e.accession == search.accession.strip()]
    if search.study:
        exams = [e for e in exams if e.study_instance_uid == search.study]
    return sorted(exams, key=lambda e: e.entry.act_time or "", reverse=True)


@dataclass(frozen=True)
class PatientRef:
    """The local patient the exam is retrieved for, and how the DMP names them."""

    id: int
    ins: str
    cx: str


DirectoryLoader = Callable[[], DrimboxDirectory]


@dataclass
class DrimboxConsumer:
    dmp: DmpConsultPort
    remote: RemoteDrimboxPort
    cache: ImageCache
    # The ANS list of trusted DRIMboxes, read again for each retrieval (the ANS updates it); raises DirectoryError.
    directory: DirectoryLoader
    backoff_s: float = 2.0
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def aclose(self) -> None:
        """Stops the retrievals under way (they show as failed once stale) and closes the connections."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.remote.aclose()

    async def start(
        self,
        consulter: Consulter,
        patient: PatientRef,
        entry: DocumentMetadata,
        token: str,
        requested_by: str,
    ) -> FetchView:
        """Starts the retrieval of ``entry``'s exam in the background, unless it is complete or under way; the
        retrieval as it stands. Raises FetchRefused for an exam kept under another patient."""
        try:
            view, run = await asyncio.to_thread(self.cache.start, patient.id, entry.unique_id, requested_by)
        except OtherPatient as exc:
            raise FetchRefused("Cet examen est rattaché à un autre patient de l'établissement") from exc
        if run:
            task = asyncio.create_task(self._run(view.id, consulter, patient, entry, token))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return view

    async def _run(
        self,
        fetch_id: int,
        consulter: Consulter,
        patient: PatientRef,
        entry: DocumentMetadata,
        token: str,
    ) -> None:
        try:
            await self.fetch(fetch_id, consulter, patient, entry, token)
        except FetchRefused as exc:
            await asyncio.to_thread(self.cache.fail, fetch_id, entry.unique_id, str(exc))
        except Exception:  # the page must say the retrieval failed, whatever broke
            log.exception("DRIMbox consumer: retrieval %s failed", fetch_id)
            await asyncio.to_thread(
                self.cache.fail, fetch_id, entry.unique_id, "Erreur interne pendant la récupération"
            )

    async def fetch(
        self, fetch_id: int, consulter: Consulter, patient: PatientRef, entry: DocumentMetadata, token: str
    ) -> None:
        """The retrieval itself: the exam complete in the cache, or FetchRefused with the reason."""
        manifest = await self._manifest(consulter, patient, entry)
        operators = await asyncio.to_thread(self._check_trusted, manifest)
        source = urlsplit(manifest.series[0].retrieve_url).netloc
        await asyncio.to_thread(
            self.cache.describe, fetch_id, manifest.study_instance_uid, source, manifest.instance_count
        )
        for attempt in range(1, ATTEMPTS + 1):
            await asyncio.to_thread(self.cache.attempt, fetch_id)
            progress = _Progress()
            try:
                for series in manifest.series:
                    operator = operators[series.retrieve_url].certificate_dn
                    await self._series(fetch_id, manifest, series, token, progress, operator)
                break
            except RemoteUnavailable as exc:
                if attempt == ATTEMPTS:
                    raise FetchRefused(f"{exc} — {ATTEMPTS} essais, abandon") from exc
                await asyncio.sleep(self.backoff_s * attempt)
            except RemoteRefused as exc:
                if exc.status == 401:
                    raise FetchRefused(
                        f"{exc} — jeton Pro Santé Connect refusé : reconnectez-vous avec Pro Santé Connect"
                    ) from exc
                raise FetchRefused(str(exc)) from exc
        await asyncio.to_thread(self.cache.complete, fetch_id, manifest.sop_instance_uid)

    def _check_trusted(self, manifest: Manifest) -> dict[str, TrustedDrimbox]:
        """Every DRIMbox the manifest sends us to is in the ANS's list, before any of them is asked: the listed
        DRIMbox of each RetrieveURL."""
        try:
            directory = self.directory()
        except DirectoryError as exc:
            raise FetchRefused(f"{exc} — aucune image n'est demandée sans liste blanche des DRIMbox") from exc
        operators = {}
        for series in manifest.series:
            listed = directory.trusted(series.retrieve_url)
            if listed is None:
                host = urlsplit(series.retrieve_url).netloc
                raise FetchRefused(
                    f"Le DRIMbox {host} n'est pas dans la liste blanche des DRIMbox : aucune image demandée"
                )
            operators[series.retrieve_url] = listed
        return operators

    async def _manifest(self, consulter: Consulter, patient: PatientRef, entry: DocumentMetadata) -> Manifest:
        if not entry.repository_unique_id:
            raise FetchRefused("Entrée du DMP sans dépôt (repositoryUniqueId) : manifeste introuvable")
        try:
            document = await self.dmp.retrieve(
                consulter, patient.cx, entry.repository_unique_id, entry.unique_id
            )
        except DmpRejectedError as exc:
            raise FetchRefused(f"Le DMP a refusé le manifeste ({exc.code}) : {exc.message}") from exc
        except DmpUnavailableError as exc:
            raise FetchRefused(f"Le DMP ne répond pas, réessayez dans un instant ({exc})") from exc
        try:
            manifest = await asyncio.to_thread(read_manifest, document.content)
        except ManifestError as exc:
            raise FetchRefused(str(exc)) from exc
        # The matricule and, when the manifest gives it, the OID that qualifies it (a NIR and a NIA may share digits).
        oid = f"&{manifest.patient_id_oid}&" if manifest.patient_id_oid else ""
        if manifest.patient_id != patient.ins or oid not in patient.cx:
            raise FetchRefused(
                "Le manifeste ne désigne pas ce patient (INS différent) : aucune image récupérée"
            )
        if manifest.sop_instance_uid != entry.unique_id:
            raise FetchRefused(
                "Le manifeste récupéré n'est pas celui que le DMP annonce (uniqueId différent)"
            )
        return manifest

    async def _series(
        self,
        fetch_id: int,
        manifest: Manifest,
        series: SeriesRef,
        token: str,
        progress: _Progress,
        operator_dn: str,
    ) -> None:
        expected = set(series.sop_instance_uids)
        received: set[str] = set()
        parts = self.remote.retrieve_series(
            series.retrieve_url, token, manifest.sop_instance_uid, operator_dn
        )
        try:
            async for part in parts:
                with contextlib.closing(part.body):
                    sop, size = await asyncio.to_thread(self._keep, part, manifest, series, expected)
                received.add(sop)
                progress.add(size)
                if progress.due():
                    await asyncio.to_thread(self.cache.progress, fetch_id, progress.done, progress.bytes)
        finally:
            await parts.aclose()
        await asyncio.to_thread(self.cache.progress, fetch_id, progress.done, progress.bytes)
        missing = expected - received
        if missing:
            raise RemoteUnavailable(
                f"DRIMbox distant : {len(missing)} instance(s) de la série {series.series_instance_uid} manquantes"
            )

    def _keep(self, part: Part, manifest: Manifest, series: SeriesRef, expected: set[str]) -> tuple[str, int]:
        """One received instance checked and written to the partial exam (one thread hop per instance)."""
        sop = _checked(part, manifest, series, expected)
        return sop, self.cache.write(manifest.sop_instance_uid, series.series_instance_uid, sop, part.body)


@dataclass
class _Progress:
    """What a retrieval received so far; written to its row at most every ``PROGRESS_EVERY_S``, since a write
    per instance would cost more than the instance."""

    done: int = 0
    bytes: int = 0
    saved_at: float = field(default_factory=monotonic)

    def add(self, size: int) -> None:
        self.done, self.bytes = self.done + 1, self.bytes + size

    def due(self) -> bool:
        if monotonic() - self.saved_at < PROGRESS_EVERY_S:
            return False
        self.saved_at = monotonic()
        return True


def _checked(part: Part, manifest: Manifest, series: SeriesRef, expected: set[str]) -> str:
    """The SOP Instance UID of a received instance the manifest lists under this study and series; else
    FetchRefused: a source sending what its manifest does not announce is not trusted further."""
    try:
        ds = pydicom.dcmread(part.body, stop_before_pixels=True)
    except (InvalidDicomError, ValueError, EOFError, OSError) as exc:
        raise FetchRefused("Le DRIMbox distant a envoyé un fichier qui n'est pas du DICOM") from exc
    finally:
        part.body.seek(0)
    sop = str(ds.get("SOPInstanceUID") or "")
    if (
        sop not in expected
        or str(ds.get("SeriesInstanceUID") or "") != series.series_instance_uid
        or str(ds.get("StudyInstanceUID") or "") != manifest.study_instance_uid
    ):
        raise FetchRefused("Le DRIMbox distant a envoyé une instance que le manifeste ne référence pas")
    return sop
