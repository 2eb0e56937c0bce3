"""The consumer's image cache: one retrieval per manifest, a lifecycle as a table, bounds in size and age, and a
retrieval whose process stopped seen as failed once it makes no progress."""

from __future__ import annotations

import io
from datetime import timedelta
from pathlib import Path

import pytest

from opensegur.flows.drimbox_cache import (
    FETCH_TRANSITIONS,
    STALE_AFTER,
    FetchEvent,
    FetchStatus,
    ImageCache,
    InvalidFetchTransition,
    OtherPatient,
)
from opensegur.store.db import Database
from opensegur.store.models import utcnow
from tests.flows.test_mss_inbound import add_patient

pytestmark = pytest.mark.requirement("IMG-DRIMBOX-CONSUMER")


def _cache(db: Database, tmp_path: Path, max_bytes: int = 10**9, days: float = 14) -> ImageCache:
    return ImageCache(db, tmp_path / "cache", max_bytes=max_bytes, max_age=timedelta(days=days))


def _complete(cache: ImageCache, patient: int, kos: str, size: int) -> int:
    view, run = cache.start(patient, kos, "dr.test")
    assert run
    cache.progress(view.id, 1, cache.write(kos, "1.2.3", f"{kos}.1", io.BytesIO(bytes(size))))
    cache.complete(view.id, kos)
    return view.id


def test_every_transition_is_in_the_table() -> None:
    assert FETCH_TRANSITIONS == {
        (FetchStatus.FETCHING, FetchEvent.COMPLETE): FetchStatus.COMPLETE,
        (FetchStatus.FETCHING, FetchEvent.FAIL): FetchStatus.FAILED,
        (FetchStatus.FAILED, FetchEvent.START): FetchStatus.FETCHING,
    }


def test_an_exam_is_readable_only_once_complete(db: Database, tmp_path: Path) -> None:
    cache = _cache(db, tmp_path)
    patient = add_patient(db)
    view, run = cache.start(patient, "1.9.1", "dr.test")
    assert run and view.status == FetchStatus.FETCHING
    cache.write("1.9.1", "1.2.3", "1.9.1.1", io.BytesIO(b"DICM"))
    assert cache.instances("1.9.1") == []  # still under .partiel/
    # Asked twice while under way: one retrieval.
    again, run_again = cache.start(patient, "1.9.1", "dr.autre")
    assert not run_again and again.id == view.id
    cache.complete(view.id, "1.9.1")
    assert [p.name for p in cache.instances("1.9.1")] == ["1.9.1.1.dcm"]
    with pytest.raises(InvalidFetchTransition):
        cache.fail(view.id, "1.9.1", "trop tard")


def test_an_exam_is_never_given_to_another_patient(db: Database, tmp_path: Path) -> None:
    cache = _cache(db, tmp_path)
    first, second = add_patient(db, ipp="IPP1"), add_patient(db, ipp="IPP2", ins=None)
    _complete(cache, first, "1.9.2", 10)
    with pytest.raises(OtherPatient):
        cache.start(second, "1.9.2", "dr.test")


def test_a_failed_retrieval_starts_over_from_nothing(db: Database, tmp_path: Path) -> None:
    cache = _cache(db, tmp_path)
    patient = add_patient(db)
    view, _ = cache.start(patient, "1.9.3", "dr.test")
    cache.progress(view.id, 1, cache.write("1.9.3", "1.2.3", "1.9.3.1", io.BytesIO(b"x" * 10)))
    cache.fail(view.id, "1.9.3", "DRIMbox distant injoignable")
    failed = cache.get(view.id)
    assert failed is not None and failed.status == FetchStatus.FAILED and failed.error
    restarted, run = cache.start(patient, "1.9.3", "dr.test")
    assert run and restarted.status == FetchStatus.FETCHING and restarted.error is None
    assert (restarted.instances_done, restarted.bytes) == (0, 0)


def test_a_retrieval_that_stopped_progressing_is_failed(db: Database, tmp_path: Path) -> None:
    cache = _cache(db, tmp_path)
    patient = add_patient(db)
    view, _ = cache.start(patient, "1.9.4", "dr.test")
    assert cache.expire_stale() == 0
    assert cache.expire_stale(utcnow() + STALE_AFTER + timedelta(seconds=1)) == 1
    stale = cache.for_patient(patient)["1.9.4"]
    assert stale.status == FetchStatus.FAILED and "interrompue" in (stale.error or "")


def test_the_cache_keeps_within_its_size_the_exams_looked_at_last(db: Database, tmp_path: Path) -> None:
    cache = _cache(db, tmp_path, max_bytes=250)
    patient = add_patient(db)
    for n in range(1, 4):
        _complete(cache, patient, f"1.9.5.{n}", 100)
    # The third exceeded 250 bytes: the first, looked at least recently, went.
    assert set(cache.for_patient(patient)) == {"1.9.5.2", "1.9.5.3"}
    assert not (tmp_path / "cache" / "1.9.5.1").exists()


def test_the_cache_forgets_exams_nobody_looked_at_for_too_long(db: Database, tmp_path: Path) -> None:
    cache = _cache(db, tmp_path, days=14)
    patient = add_patient(db)
    _complete(cache, patient, "1.9.6", 10)
    assert cache.purge(now=utcnow() + timedelta(days=13)) == []
    assert cache.purge(now=utcnow() + timedelta(days=15)) == ["1.9.6"]
    assert cache.instances("1.9.6") == []
