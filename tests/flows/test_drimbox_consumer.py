"""The DRIMbox consumer's retrieval: what it checks before keeping anything, how it retries a source that stops
mid-transfer, and that an exam is complete in the cache only when every instance the manifest lists arrived."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest

from opensegur.documents.metadata import Coded
from opensegur.flows.dmp_consult import Consulter
from opensegur.flows.drimbox_cache import FetchStatus, ImageCache
from opensegur.flows.drimbox_consumer import (
    ATTEMPTS,
    DirectoryLoader,
    DrimboxConsumer,
    FetchRefused,
    PatientRef,
)
from opensegur.flows.drimbox_ports import RemoteRefused
from opensegur.security.drimbox_directory import DirectoryError, DrimboxDirectory, TrustedDrimbox
from opensegur.store.db import Database
from tests.flows.drimbox_fakes import KOS_UID, SERIES, WADO, FakeDmp, FakeRemote, cut_short, entry, instance
from tests.flows.test_mss_inbound import add_patient
from tests.imaging.helpers import PATIENT_INS

pytestmark = pytest.mark.requirement("IMG-DRIMBOX-CONSUMER")

DOCTOR = Consulter("10000000017", "Dr Test", (Coded("10", "1.2.250.1.71.1.2.7", "Médecin"),), "1750000028")


TRUSTED = DrimboxDirectory((TrustedDrimbox("DB-CHU-Y", WADO),))


def _consumer(
    db: Database,
    tmp_path: Path,
    remote: FakeRemote,
    dmp: FakeDmp | None = None,
    directory: DirectoryLoader = lambda: TRUSTED,
) -> DrimboxConsumer:
    cache = ImageCache(db, tmp_path / "cache", max_bytes=10**9, max_age=timedelta(days=1))
    return DrimboxConsumer(dmp or FakeDmp(), remote, cache, directory, backoff_s=0)  # type: ignore[arg-type]


def _patient(db: Database, ins: str = PATIENT_INS) -> PatientRef:
    return PatientRef(add_patient(db, ins=ins), ins, f"{ins}^^^&1.2.250.1.213.1.4.10&ISO^NH")


async def _fetch(consumer: DrimboxConsumer, patient: PatientRef) -> int:
    view, run = consumer.cache.start(patient.id, KOS_UID, "dr.test")
    assert run
    await consumer.fetch(view.id, DOCTOR, patient, entry(), "token")
    return view.id


async def test_every_series_is_retrieved_from_the_source_named_by_the_manifest(
    sqlite_db: Database, tmp_path: Path
) -> None:
    remote = FakeRemote()
    consumer = _consumer(sqlite_db, tmp_path, remote)
    fetch_id = await _fetch(consumer, _patient(sqlite_db))
    view = consumer.cache.get(fetch_id)
    assert view is not None and view.status == FetchStatus.COMPLETE
    assert (view.instances_expected, view.instances_done) == (5, 5)
    assert [c[0] for c in remote.calls] == [
        f"{WADO}/studies/1.2.250.1.213.4.5.2.1.102/series/{s}" for s in SERIES
    ]
    assert {(token, kos) for _url, token, kos in remote.calls} == {("token", KOS_UID)}
    assert sorted(p.stem for p in consumer.cache.instances(KOS_UID)) == sorted(sum(SERIES.values(), []))


async def test_a_source_that_stops_mid_transfer_is_asked_again(sqlite_db: Database, tmp_path: Path) -> None:
    remote = FakeRemote(script={1: cut_short})
    consumer = _consumer(sqlite_db, tmp_path, remote)
    fetch_id = await _fetch(consumer, _patient(sqlite_db))
    view = consumer.cache.get(fetch_id)
    assert view is not None and view.status == FetchStatus.COMPLETE and view.instances_done == 5
    assert len(remote.calls) == 1 + len(SERIES)


async def test_a_source_that_keeps_failing_leaves_nothing_shown_as_complete(
    sqlite_db: Database, tmp_path: Path
) -> None:
    remote = FakeRemote(script={n: cut_short for n in range(1, 10)})
    consumer = _consumer(sqlite_db, tmp_path, remote)
    patient = _patient(sqlite_db)
    view, _ = consumer.cache.start(patient.id, KOS_UID, "dr.test")
    with pytest.raises(FetchRefused, match=f"{ATTEMPTS} essais"):
        await consumer.fetch(view.id, DOCTOR, patient, entry(), "token")
    consumer.cache.fail(view.id, KOS_UID, "abandon")
    assert consumer.cache.instances(KOS_UID) == []
    assert not (tmp_path / "cache" / ".partiel" / KOS_UID).exists()
    assert len(remote.calls) == ATTEMPTS


@pytest.mark.parametrize(
    ("sent", "reason"),
    [
        (lambda series: [b"%PDF-1.7 not dicom"], "pas du DICOM"),
        (lambda series: [instance(series, "1.2.250.1.999.6.99")], "ne référence pas"),
        (lambda series: [instance(series, SERIES[series][0], study="1.2.3.4")], "ne référence pas"),
        (lambda series: [RemoteRefused(404, "DRIMbox distant : refus HTTP 404")], "404"),
        (lambda series: [RemoteRefused(401, "DRIMbox distant : refus HTTP 401")], "reconnectez-vous"),
    ],
)
async def test_what_the_source_sends_is_checked_against_the_manifest(
    sqlite_db: Database, tmp_path: Path, sent: object, reason: str
) -> None:
    consumer = _consumer(sqlite_db, tmp_path, FakeRemote(script={1: sent}))  # type: ignore[dict-item]
    patient = _patient(sqlite_db)
    view, _ = consumer.cache.start(patient.id, KOS_UID, "dr.test")
    with pytest.raises(FetchRefused, match=reason):
        await consumer.fetch(view.id, DOCTOR, patient, entry(), "token")


async def test_a_manifest_naming_another_patient_brings_no_image(sqlite_db: Database, tmp_path: Path) -> None:
    remote = FakeRemote()
    consumer = _consumer(sqlite_db, tmp_path, remote)
    other = _patient(sqlite_db, ins="180012345678965")
    view, _ = consumer.cache.start(other.id, KOS_UID, "dr.test")
    with pytest.raises(FetchRefused, match="ne désigne pas ce patient"):
        await consumer.fetch(view.id, DOCTOR, other, entry(), "token")
    assert remote.calls == []


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"<ClinicalDocument/>", "pas un fichier DICOM"),
        (instance("1.2.3", "1.2.3.4"), "pas un manifeste KOS"),
    ],
)
async def test_a_dmp_document_that_is_no_manifest_is_refused(
    sqlite_db: Database, tmp_path: Path, content: bytes, reason: str
) -> None:
    consumer = _consumer(sqlite_db, tmp_path, FakeRemote(), FakeDmp(content))
    patient = _patient(sqlite_db)
    view, _ = consumer.cache.start(patient.id, KOS_UID, "dr.test")
    with pytest.raises(FetchRefused, match=reason):
        await consumer.fetch(view.id, DOCTOR, patient, entry(), "token")


async def test_a_retrieval_in_the_background_ends_failed_with_its_reason(
    sqlite_db: Database, tmp_path: Path
) -> None:
    remote = FakeRemote(script={1: lambda s: [b"not dicom"]})
    consumer = _consumer(sqlite_db, tmp_path, remote)
    view = await consumer.start(DOCTOR, _patient(sqlite_db), entry(), "token", "dr.test")
    assert view.status == FetchStatus.FETCHING
    for _ in range(200):
        done = consumer.cache.get(view.id)
        if done is not None and done.status != FetchStatus.FETCHING:
            break
        await asyncio.sleep(0.01)
    assert done is not None and done.status == FetchStatus.FAILED and "pas du DICOM" in (done.error or "")
    await consumer.aclose()
    assert remote.closed


def _no_list() -> DrimboxDirectory:
    raise DirectoryError("Signature de la liste blanche invalide")


@pytest.mark.parametrize(
    ("directory", "reason"),
    [
        (
            lambda: DrimboxDirectory((TrustedDrimbox("AUTRE", "https://drimbox.autre.test"),)),
            "pas dans la liste",
        ),
        (_no_list, "sans liste blanche"),
    ],
    ids=["unlisted", "no valid list"],
)
async def test_no_drimbox_outside_the_ans_list_is_asked(
    sqlite_db: Database, tmp_path: Path, directory: DirectoryLoader, reason: str
) -> None:
    remote = FakeRemote()
    consumer = _consumer(sqlite_db, tmp_path, remote, directory=directory)
    patient = _patient(sqlite_db)
    view, _ = consumer.cache.start(patient.id, KOS_UID, "dr.test")
    with pytest.raises(FetchRefused, match=reason):
        await consumer.fetch(view.id, DOCTOR, patient, entry(), "token")
    assert remote.calls == []


async def test_a_manifest_naming_the_ins_under_another_oid_brings_no_image(
    sqlite_db: Database, tmp_path: Path
) -> None:
    remote = FakeRemote()
    consumer = _consumer(sqlite_db, tmp_path, remote)
    patient = _patient(sqlite_db)
    # The same digits, qualified by the NIA's OID rather than the NIR's.
    nia = PatientRef(
        patient.id, patient.ins, patient.cx.replace("1.2.250.1.213.1.4.10", "1.2.250.1.213.1.4.9")
    )
    view, _ = consumer.cache.start(nia.id, KOS_UID, "dr.test")
    with pytest.raises(FetchRefused, match="ne désigne pas ce patient"):
        await consumer.fetch(view.id, DOCTOR, nia, entry(), "token")
    assert remote.calls == []
