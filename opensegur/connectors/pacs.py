"""The hospital's PACS over DICOM DIMSE (pynetdicom): C-ECHO, an exam's instances by C-FIND, a series by C-GET,
instances by C-STORE (an exam of another hospital imported from the DRIMbox consumer's cache).

The DRIMbox source asks the PACS which images an imaging report's exam holds before it builds the manifest. The
query walks the Study Root model level by level — the study's series, then each series' instances — since a PACS
that implements only the hierarchical model (PS3.4 §C.4.1.2.1) refuses an IMAGE-level query without the series.

A series is retrieved with C-GET on an association of its own, so that two retrievals never share a receiver
(the ANS prototype's C-MOVE receiver mixed concurrent ones), and handed over one instance at a time through a
bounded queue: memory stays flat whatever the series' size, and a reader that stops aborts the retrieval.

pynetdicom is blocking: callers on the event loop run these methods in a thread."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, build_role, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    Verification,
)

from opensegur.flows.drimbox_ports import PacsError, PacsQueryError, PacsUnavailable, RetrievedInstance
from opensegur.imaging.wado import AS_STORED

__all__ = ["PacsClient", "PacsEndpoint"]

HAND_OVER = 4  # instances received and not yet read: the PACS waits beyond
_END = object()

_PENDING = (0xFF00, 0xFF01)
_SERIES_KEYS = ("Modality", "SeriesNumber", "SeriesDescription")
_STUDY_KEYS = (
    "PatientID",
    "AccessionNumber",
    "StudyDate",
    "StudyTime",
    "StudyDescription",
    "ReferringPhysicianName",
    "StudyID",
)
_IMAGE_KEYS = ("SOPClassUID", "SOPInstanceUID", "InstanceNumber", "NumberOfFrames")


@dataclass(frozen=True)
class PacsEndpoint:
    host: str
    port: int
    called_aet: str  # the PACS's AE title
    calling_aet: str = "OPENSEGUR"  # ours, as declared in the PACS
    timeout_s: float = 30.0

    def __str__(self) -> str:
        return f"{self.called_aet}@{self.host}:{self.port}"


class PacsClient:
    def __init__(self, endpoint: PacsEndpoint) -> None:
        self.endpoint = endpoint

    def _ae(self) -> AE:
        """Our application entity, with the endpoint's timeout on every exchange."""
        ae = AE(ae_title=self.endpoint.calling_aet)
        for timeout in ("acse_timeout", "dimse_timeout", "network_timeout"):
            setattr(ae, timeout, self.endpoint.timeout_s)
        return ae

    def _associate(self, context: str) -> Association:
        ae = self._ae()
        ae.add_requested_context(context)
        assoc = ae.associate(self.endpoint.host, self.endpoint.port, ae_title=self.endpoint.called_aet)
        if not assoc.is_established:
            why = "refusée" if assoc.is_rejected else "interrompue" if assoc.is_aborted else "impossible"
            raise PacsUnavailable(f"PACS {self.endpoint} : association {why}")
        return assoc

    def store(self, files: Sequence[Path]) -> int:
        """C-STORE of ``files`` (DICOM Part 10) to the PACS, on one association; how many it took. Raises
        PacsUnavailable, or PacsQueryError on the first instance the PACS refuses."""
        if not files:
            return 0
        ae = self._ae()
        for sop_class, syntaxes in _store_contexts(files):
            ae.add_requested_context(sop_class, syntaxes)
        assoc = ae.associate(self.endpoint.host, self.endpoint.port, ae_title=self.endpoint.called_aet)
        if not assoc.is_established:
            raise PacsUnavailable(f"PACS {self.endpoint} : association refusée pour le C-STORE")
        stored = 0
        try:
            for path in files:
                status = assoc.send_c_store(path)
                if not status:
                    raise PacsUnavailable(f"PACS {self.endpoint} : pas de réponse au C-STORE")
                if status.Status not in (0x0000, 0xB000, 0xB007, 0xB006):  # success, or a warning
                    raise PacsQueryError(f"PACS {self.endpoint} : C-STORE refusé ({_status(status)})")
                stored += 1
        finally:
            assoc.release()
        return stored

    def echo(self) -> None:
        """C-ECHO: the PACS answers this AE title."""
        assoc = self._associate(Verification)
        try:
            status = assoc.send_c_echo()
        finally:
            assoc.release()
        if not status:
            # A PACS that does not know the calling AE title may accept the association, then abort it.
            raise PacsUnavailable(
                f"PACS {self.endpoint} : pas de réponse au C-ECHO ({self.endpoint.calling_aet} "
                "est-il déclaré dans le PACS ?)"
            )
        if status.Status != 0x0000:
            raise PacsQueryError(f"PACS {self.endpoint} : C-ECHO en échec ({_status(status)})")

    def _find(self, assoc: Association, query: Dataset) -> list[Dataset]:
        found = []
        for status, identifier in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
            if not status:
                raise PacsUnavailable(f"PACS {self.endpoint} : pas de réponse au C-FIND")
            if status.Status in _PENDING and identifier is not None:
                found.append(identifier)
            elif status.Status != 0x0000:
                raise PacsQueryError(f"PACS {self.endpoint} : C-FIND en échec ({_status(status)})")
        return found

    def find_instances(self, study_instance_uid: str) -> list[Dataset]:
        """Every instance of the study, each with its study, series and instance attributes (what
        ``imaging.study.study_from_matches`` groups); [] when the PACS does not know the study."""
        assoc = self._associate(StudyRootQueryRetrieveInformationModelFind)
        try:
            study = _query("STUDY", StudyInstanceUID=study_instance_uid, keys=_STUDY_KEYS)
            studies = self._find(assoc, study)
            if not studies:
                return []
            series_list = self._find(
                assoc,
                _query(
                    "SERIES", StudyInstanceUID=study_instance_uid, SeriesInstanceUID="", keys=_SERIES_KEYS
                ),
            )
            matches = []
            for series in series_list:
                images = self._find(
                    assoc,
                    _query(
                        "IMAGE",
                        StudyInstanceUID=study_instance_uid,
                        SeriesInstanceUID=str(series.SeriesInstanceUID),
                        keys=_IMAGE_KEYS,
                    ),
                )
                for image in images:
                    for source in (studies[0], series):
                        for keyword in (*_STUDY_KEYS, *_SERIES_KEYS, "SeriesInstanceUID"):
                            if keyword in source and keyword not in image:
                                setattr(image, keyword, source.get(keyword))
                    image.StudyInstanceUID = study_instance_uid
                    matches.append(image)
            return matches
        finally:
            assoc.release()

    def retrieve_series(
        self, study_instance_uid: str, series_instance_uid: str, transfer_syntaxes: Sequence[str]
    ) -> Iterator[RetrievedInstance]:
        """The series' instances by C-GET, each in one of ``transfer_syntaxes`` (the PACS picks among them, in
        their order of preference). Raises PacsUnavailable, or PacsQueryError when the PACS ends in failure."""
        find = self._associate(StudyRootQueryRetrieveInformationModelFind)
        try:
            images = self._find(
                find,
                _query(
                    "IMAGE",
                    StudyInstanceUID=study_instance_uid,
                    SeriesInstanceUID=series_instance_uid,
                    keys=("SOPClassUID",),
                ),
            )
        finally:
            find.release()
        classes = sorted({str(i.SOPClassUID) for i in images if i.get("SOPClassUID")})
        if not classes:
            return
        handed: queue.Queue[object] = queue.Queue(maxsize=HAND_OVER)
        stop = threading.Event()

        def on_store(event: evt.Event) -> int:
            item = RetrievedInstance(event.encoded_dataset(), str(event.context.transfer_syntax))
            while not stop.is_set():
                try:
                    handed.put(item, timeout=0.5)
                    return 0x0000
                except queue.Full:
                    continue
            return 0xA700  # Out of resources: the reader is gone

        ae = self._ae()
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
        for sop_class, syntaxes in storage_contexts(classes, transfer_syntaxes):
            ae.add_requested_context(sop_class, syntaxes)
        roles: list[Any] = [build_role(sop_class, scp_role=True) for sop_class in classes[:127]]
        assoc = ae.associate(
            self.endpoint.host,
            self.endpoint.port,
            ae_title=self.endpoint.called_aet,
            ext_neg=roles,
            evt_handlers=[(evt.EVT_C_STORE, on_store)],
        )
        if not assoc.is_established:
            raise PacsUnavailable(f"PACS {self.endpoint} : association refusée pour le C-GET")
        failure: list[PacsError] = []
        query = _query(
            "SERIES", StudyInstanceUID=study_instance_uid, SeriesInstanceUID=series_instance_uid, keys=()
        )

        def run() -> None:
            try:
                for status, _identifier in assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet):
                    if not status:
                        failure.append(PacsUnavailable(f"PACS {self.endpoint} : pas de réponse au C-GET"))
                    elif status.Status not in (*_PENDING, 0x0000, 0xB000):
                        failure.append(
                            PacsQueryError(f"PACS {self.endpoint} : C-GET en échec ({_status(status)})")
                        )
            finally:
                assoc.release()
                while not stop.is_set():
                    try:
                        handed.put(_END, timeout=0.5)
                        break
                    except queue.Full:
                        continue

        worker = threading.Thread(target=run, name="pacs-c-get", daemon=True)
        worker.start()
        try:
            while (item := handed.get()) is not _END:
                assert isinstance(item, RetrievedInstance)
                yield item
            if failure:
                raise failure[0]
        finally:
            stop.set()
            if assoc.is_established:
                assoc.abort()
            # After an abort, pynetdicom's C-GET loop still waits out its DIMSE timeout: the thread is left to
            # end on its own, it holds nothing the caller reads.
            worker.join(timeout=1.0)


def _store_contexts(files: Sequence[Path]) -> list[tuple[str, list[str]]]:
    """One presentation context per SOP class, with the transfer syntaxes the files are in (as stored: the
    PACS receives them untouched)."""
    by_class: dict[str, set[str]] = {}
    for path in files:
        meta = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"]).file_meta
        by_class.setdefault(str(meta.MediaStorageSOPClassUID), set()).add(str(meta.TransferSyntaxUID))
    if len(by_class) > 128:
        raise PacsQueryError("Plus de 128 classes SOP dans l'examen : import impossible en une association")
    return [(sop_class, sorted(syntaxes)) for sop_class, syntaxes in by_class.items()]


def storage_contexts(classes: list[str], transfer_syntaxes: Sequence[str]) -> list[tuple[str, list[str]]]:
    """The presentation contexts that receive the series (127 at most: 128 in all, one taken by the C-GET). The
    acceptor picks one transfer syntax per context; for AS_STORED each syntax gets a context of its own, so that
    the PACS finds among the accepted ones the syntax the instance is stored in and sends it untouched."""
    named = [s for s in transfer_syntaxes if s != AS_STORED]
    if AS_STORED in transfer_syntaxes:
        every = named + [s for s in ALL_TRANSFER_SYNTAXES if s not in named]
        if len(classes) * len(every) <= 127:
            return [(c, [s]) for c in classes for s in every]
        named = every
    return [(c, named) for c in classes[:127]]


def _query(level: str, *, keys: tuple[str, ...], **unique: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in unique.items():
        setattr(ds, keyword, value)
    for keyword in keys:
        setattr(ds, keyword, "")
    return ds


def _status(status: Dataset | None) -> str:
    return f"statut 0x{int(status.Status):04X}" if status else "sans réponse"
