"""The DMP feed under faults: the outbox retries what may succeed later, stops on what will not, never sends a
document twice nor a replacement before its original, and the gates (hold, identity, opposition) hold."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from opensegur.flows.dmp_feed import hold, release, retry
from opensegur.identity.ins import nir_key
from opensegur.sandbox.dmp.patients import CLOSED_NUMBER
from opensegur.server import Runtime
from tests.dmp import helpers
from tests.dmp.helpers import (
    INS,
    DpiListener,
    adt,
    clear_fault,
    delivery_jobs,
    dmp_calls,
    document,
    documents,
    entries_for,
    inspect,
    mdm,
    new_number,
    open_dmp,
    pid_segment,
    running_platform,
    send_raw,
    set_fault,
    uid,
    wait_for,
    wait_status,
    wait_zam,
    zams_for,
)

platform = helpers.platform
schematron_cache = helpers.schematron_cache


def _ins(number13: str) -> str:
    return f"{number13}{nir_key(number13):02d}"


def _at(call: dict[str, object]) -> datetime:
    return datetime.fromisoformat(str(call["at"]))


def _registered_order(calls: list[dict[str, Any]], entries: dict[str, dict[str, Any]]) -> list[str]:
    """The uniqueIds registered by successive ITI-41 calls, in the order the sandbox received them."""
    by_uuid = {e["entryUUID"]: uid_ for uid_, e in entries.items()}
    return [next(by_uuid[u] for u in c["entries"] if u in by_uuid) for c in calls]


async def test_http_503_is_retried_with_backoff_and_delivered_once(
    platform: tuple[Runtime, DpiListener],
) -> None:
    rt, dpi = platform
    await set_fault(rt, http_status=503, count=2, transactions=["iti41"])
    n = new_number()
    sent = await send_raw(rt, mdm("initial", n))
    assert sent.code == "AA"

    [zam] = await wait_zam(dpi, sent.cid)
    assert zam.status.success and zam.status.errors == []
    doc = await wait_status(rt, uid(n), {"acknowledged"})
    [delivery] = doc.deliveries
    assert delivery["status"] == "delivered" and delivery["entry_uuid"]
    # The flow view keeps every attempt: two refused by the DMP, then the one that went through.
    iti41 = [(e["http_status"], e["outcome"]) for e in doc.exchanges if e["transaction"] == "ITI-41"]
    assert iti41 == [(503, "retry"), (503, "retry"), (200, "success")]
    [job] = delivery_jobs(rt, delivery["id"])
    assert job["status"] == "done" and job["attempts"] == 3

    calls = await dmp_calls(rt, "iti41")
    assert [c["status"] for c in calls] == [503, 503, 200]
    # Backoff: a retry never follows the failure at once (base 0.1 s, full jitter ≥ half the ceiling).
    assert all((_at(b) - _at(a)).total_seconds() >= 0.05 for a, b in zip(calls, calls[1:], strict=False))
    # Each retry after an uncertain attempt asked the registry first.
    assert len(await dmp_calls(rt, "iti18")) == 2
    [entry] = await entries_for(rt, uid(n))
    assert entry["status"] == "Approved" and entry["entryUUID"] == delivery["entry_uuid"]


async def test_an_outage_longer_than_the_attempts_is_waited_out_and_delivered_once(
    tmp_path: Path, schematron_cache: Path
) -> None:
    """Two attempts per job, five refusals in a row: the DMP's unavailability spends no attempt."""
    async with running_platform(tmp_path, schematron_cache, job_max_attempts=2) as (rt, dpi):
        await set_fault(rt, http_status=503, count=5, transactions=["iti41"])
        n = new_number()
        sent = await send_raw(rt, mdm("initial", n))
        assert sent.code == "AA"
        [zam] = await wait_zam(dpi, sent.cid)
        assert zam.status.success
        doc = await wait_status(rt, uid(n), {"acknowledged"})
        [delivery] = doc.deliveries
        [job] = delivery_jobs(rt, delivery["id"])
        assert job["status"] == "done" and job["attempts"] == 6
        assert [c["status"] for c in await dmp_calls(rt, "iti41")] == [503] * 5 + [200]
        assert len(await entries_for(rt, uid(n))) == 1


async def test_attempts_spent_give_the_delivery_up_until_the_operator_retries(
    tmp_path: Path, schematron_cache: Path
) -> None:
    """An outage not waited out (job_outage_max_s=0) spends the two attempts: the job is dead, and so is the
    delivery (« Échec définitif », not « nouvel essai prévu »), with the DPI's negative ZAM; the operator's retry of
    the job delivers it once."""
    async with running_platform(tmp_path, schematron_cache, job_max_attempts=2, job_outage_max_s=0) as (
        rt,
        dpi,
    ):
        await set_fault(rt, http_status=503, transactions=["iti41"])
        n = new_number()
        sent = await send_raw(rt, mdm("initial", n))
        assert sent.code == "AA"
        [zam] = await wait_zam(dpi, sent.cid)
        assert not zam.status.success
        doc = await wait_status(rt, uid(n), {"error"})
        [delivery] = doc.deliveries
        assert delivery["status"] == "dead" and delivery["error_code"] == "DMP_UNAVAILABLE"
        [job] = delivery_jobs(rt, delivery["id"])
        assert job["status"] == "dead" and job["attempts"] == 2
        assert [c["status"] for c in await dmp_calls(rt, "iti41")] == [503, 503]

        await clear_fault(rt)
        async with httpx.AsyncClient() as c:
            r = await c.post(f"http://127.0.0.1:{rt.http_port}/api/v1/jobs/{job['id']}/retry")
            assert r.status_code == 200, r.text
        zams = await wait_zam(dpi, sent.cid, count=2)
        assert zams[-1].status.success
        doc = await wait_status(rt, uid(n), {"acknowledged"})
        assert doc.deliveries[0]["status"] == "delivered"
        assert len(await entries_for(rt, uid(n))) == 1


async def test_failure_after_commit_is_resolved_by_a_query_not_a_second_send(
    platform: tuple[Runtime, DpiListener],
) -> None:
    rt, dpi = platform
    await set_fault(rt, fail_after_commit=True, count=1, transactions=["iti41"])
    n = new_number()
    sent = await send_raw(rt, mdm("initial", n))
    assert sent.code == "AA"

    [zam] = await wait_zam(dpi, sent.cid)
    assert zam.status.success
    doc = await wait_status(rt, uid(n), {"acknowledged"})
    [delivery] = doc.deliveries
    assert delivery["status"] == "delivered"
    # One ITI-41 only: it committed, answered 500; the retry found the entry through ITI-18.
    calls = await dmp_calls(rt, "iti41")
    assert len(calls) == 1 and calls[0]["status"] == 500 and calls[0]["fail_after_commit"]
    assert [c["result"] for c in await dmp_calls(rt, "iti18")] == ["Success"]
    assert [(e["transaction"], e["http_status"], e["outcome"]) for e in doc.exchanges] == [
        ("ITI-41", 500, "retry")
    ]
    [entry] = await entries_for(rt, uid(n))
    assert entry["entryUUID"] == delivery["entry_uuid"]


async def test_soap_fault_is_permanent_until_the_operator_retries(
    platform: tuple[Runtime, DpiListener],
) -> None:
    rt, dpi = platform
    await set_fault(rt, soap_fault="XDSRegistryError", transactions=["iti41"])
    n = new_number()
    sent = await send_raw(rt, mdm("initial", n))
    assert sent.code == "AA"

    [zam] = await wait_zam(dpi, sent.cid)
    assert not zam.status.success
    assert [e.code for e in zam.status.errors] == ["XDSRegistryError"]
    doc = await wait_status(rt, uid(n), {"error"})
    assert doc.status_reason is not None and "XDSRegistryError" in doc.status_reason
    [delivery] = doc.deliveries
    assert delivery["status"] == "dead" and delivery["error_code"] == "XDSRegistryError"
    [job] = delivery_jobs(rt, delivery["id"])
    assert job["status"] == "dead" and job["attempts"] == 1  # no retry of a permanent refusal
    assert len(await dmp_calls(rt, "iti41")) == 1
    assert await entries_for(rt, uid(n)) == []

    await clear_fault(rt)
    async with httpx.AsyncClient() as c:
        r = await c.post(f"http://127.0.0.1:{rt.http_port}/api/v1/jobs/{job['id']}/retry")
        assert r.status_code == 200, r.text
        # Only a dead job can be retried.
        assert (
            await c.post(f"http://127.0.0.1:{rt.http_port}/api/v1/jobs/{job['id']}/retry")
        ).status_code in (
            200,
            409,
        )
    zams = await wait_zam(dpi, sent.cid, count=2)
    assert zams[-1].status.success
    doc = await wait_status(rt, uid(n), {"acknowledged"})
    assert doc.deliveries[0]["status"] == "delivered" and doc.deliveries[0]["error_code"] is not None
    [entry] = await entries_for(rt, uid(n))
    assert entry["status"] == "Approved"


async def test_closed_dmp_is_a_permanent_error_with_its_code(platform: tuple[Runtime, DpiListener]) -> None:
    rt, dpi = platform
    closed = _ins(CLOSED_NUMBER)
    pid = (
        f"PID|||{closed}^^^ASIP-SANTE-INS-NIR&1.2.250.1.213.1.4.10&ISO^INS||FERMETURE^ODILE^ODILE^^^^L||19450115|F"
        "|||^^^^^^BDL^^75056" + "|" * 21 + "VALI"
    )
    n = new_number()
    sent = await send_raw(rt, mdm("initial", n, pid=pid, cda_replacements={INS: closed}))
    assert sent.code == "AA"

    [zam] = await wait_zam(dpi, sent.cid)
    assert not zam.status.success
    assert [e.code for e in zam.status.errors] == ["DMP_SBX_DMP_FERME"]
    doc = await wait_status(rt, uid(n), {"error"})
    assert doc.ins_matricule == closed
    assert doc.deliveries[0]["status"] == "dead" and doc.deliveries[0]["error_code"] == "DMP_SBX_DMP_FERME"
    assert [e["outcome"] for e in doc.exchanges] == ["rejected"]

    # The operator's retry through the flow function: the DMP is still closed, the same answer comes back.
    assert retry(rt.db, doc.id, "vigilance") == 1
    assert document(rt, uid(n)).status == "validated"

    async def failed_twice() -> bool:
        return len(await dmp_calls(rt, "iti41")) == 2 and document(rt, uid(n)).status == "error"

    await wait_for(failed_twice)
    assert [c["result"] for c in await dmp_calls(rt, "iti41")] == ["DMP_SBX_DMP_FERME"] * 2
    assert await inspect(rt, closed) == []


@pytest.mark.parametrize("fault", [{"latency_ms": 2500}, {"timeout": True}])
async def test_answer_slower_than_the_client_timeout_is_retried_and_delivered_once(
    tmp_path: Path, schematron_cache: Path, fault: dict[str, object]
) -> None:
    async with running_platform(tmp_path, schematron_cache, dmp_timeout_s=1.0) as (rt, dpi):
        await set_fault(rt, count=1, transactions=["iti41"], **fault)
        n = new_number()
        started = time.monotonic()
        sent = await send_raw(rt, mdm("initial", n))
        assert sent.code == "AA"
        [zam] = await wait_zam(dpi, sent.cid)
        assert zam.status.success
        doc = await wait_status(rt, uid(n), {"acknowledged"})
        iti41 = [(e["transaction"], e["http_status"], e["outcome"]) for e in doc.exchanges]
        assert iti41 == [("ITI-41", None, "retry"), ("ITI-41", 200, "success")]
        # Let the slow request end (the latency one is then processed, after the client gave up).
        await asyncio.sleep(max(0.0, 3.0 - (time.monotonic() - started)))
        assert len(await dmp_calls(rt, "iti41")) == 2
        [entry] = await entries_for(rt, uid(n))
        assert entry["entryUUID"] == doc.deliveries[0]["entry_uuid"]


async def test_replacement_never_overtakes_a_failing_initial(tmp_path: Path, schematron_cache: Path) -> None:
    # A small attempt budget: the replacement waits for its original longer than its own retries would last.
    async with running_platform(tmp_path, schematron_cache, job_max_attempts=3) as (rt, dpi):
        await set_fault(rt, soap_fault="XDSRegistryBusy", transactions=["iti41"])
        first, second = new_number(), new_number()
        initial = await send_raw(rt, mdm("initial", first))
        assert initial.code == "AA"
        await wait_status(rt, uid(first), {"error"})
        replacement = await send_raw(rt, mdm("replacement", second, parent=first))
        assert replacement.code == "AA"

        async def replacement_waits() -> bool:
            docs = documents(rt, uid(second))
            return bool(docs and docs[0].deliveries)

        await wait_for(replacement_waits)
        await asyncio.sleep(1.5)  # longer than three attempts with a 0.1-0.5 s backoff
        assert [c["result"] for c in await dmp_calls(rt, "iti41")] == ["XDSRegistryBusy"]
        waiting = document(rt, uid(second), "replacement")
        assert waiting.deliveries[0]["status"] == "waiting", waiting
        assert waiting.status == "validated"
        assert zams_for(dpi, replacement.cid) == []

        await clear_fault(rt)
        initial_doc = document(rt, uid(first))
        assert retry(rt.db, initial_doc.id, "operateur") == 1
        [zam] = await wait_zam(dpi, replacement.cid)
        assert zam.status.success
        calls = [c for c in await dmp_calls(rt, "iti41") if c["status"] == 200]
        entries = {e["uniqueId"]: e for e in await inspect(rt)}
        assert _registered_order(calls, entries) == [uid(first), uid(second)]
        assert entries[uid(first)]["status"] == "Deprecated"
        assert entries[uid(second)]["status"] == "Approved"
        assert document(rt, uid(second), "replacement").status == "acknowledged"


async def test_replacement_sent_during_an_outage_follows_its_initial(
    platform: tuple[Runtime, DpiListener],
) -> None:
    rt, dpi = platform
    await set_fault(rt, http_status=503, count=3, transactions=["iti41"])
    first, second = new_number(), new_number()
    initial = await send_raw(rt, mdm("initial", first))
    replacement = await send_raw(rt, mdm("replacement", second, parent=first))
    assert (initial.code, replacement.code) == ("AA", "AA")
    await wait_zam(dpi, initial.cid)
    [zam] = await wait_zam(dpi, replacement.cid)
    assert zam.status.success
    ok = [c for c in await dmp_calls(rt, "iti41") if c["status"] == 200]
    assert len(ok) == 2
    entries = await inspect(rt)
    by_uid = {e["uniqueId"]: e for e in entries}
    assert by_uid[uid(first)]["status"] == "Deprecated" and by_uid[uid(second)]["status"] == "Approved"
    # The DMP registered the initial first, then the replacement (RPLC of the initial's entry).
    assert _registered_order(ok, by_uid) == [uid(first), uid(second)]


async def test_hold_before_delivery_then_release(tmp_path: Path, schematron_cache: Path) -> None:
    # No worker: the test drives the queue, so the document is deterministically held before any processing.
    async with running_platform(tmp_path, schematron_cache, workers=0) as (rt, dpi):
        n = new_number()
        sent = await send_raw(rt, mdm("initial", n))
        assert sent.code == "AA"
        doc = document(rt, uid(n))
        assert doc.status == "received" and doc.deliveries == []
        hold(rt.db, doc.id, "dr-hold")
        assert document(rt, uid(n)).status == "held"

        await rt.workers.drain()
        held = document(rt, uid(n))
        assert held.status == "held" and held.held
        assert [d["status"] for d in held.deliveries] == ["held"]
        assert await dmp_calls(rt, "iti41") == [] and await entries_for(rt, uid(n)) == []
        assert zams_for(dpi, sent.cid) == []

        release(rt.db, doc.id, "dr-hold")
        assert document(rt, uid(n)).status == "validated"
        await rt.workers.drain()
        done = document(rt, uid(n))
        assert done.status == "acknowledged" and done.deliveries[0]["status"] == "delivered"
        [zam] = zams_for(dpi, sent.cid)
        assert zam.status.success
        [entry] = await entries_for(rt, uid(n))
        assert entry["status"] == "Approved"


async def test_document_waits_for_a_qualified_identity(platform: tuple[Runtime, DpiListener]) -> None:
    rt, dpi = platform
    ipp, ins = f"G{new_number()[:8]}", _ins("2610459350123")
    await open_dmp(rt, ins)
    created = await send_raw(rt, adt("A28", f"A28-{ipp}", pid_segment(ipp, status="PROV")))
    assert created.code == "AA"

    n = new_number()
    pid = pid_segment(ipp, status="PROV")
    sent = await send_raw(rt, mdm("initial", n, pid=pid, cda_replacements={INS: ins}))
    assert sent.code == "AA"
    doc = await wait_status(rt, uid(n), {"waiting_identity"})
    assert doc.deliveries == [] and doc.ins_matricule == ins
    await asyncio.sleep(0.5)
    assert document(rt, uid(n)).status == "waiting_identity"
    assert await dmp_calls(rt, "iti41") == [] and await inspect(rt, ins) == []
    assert zams_for(dpi, sent.cid) == []

    qualified = await send_raw(rt, adt("A31", f"A31-{ipp}", pid_segment(ipp, ins=ins, status="VALI")))
    assert qualified.code == "AA"
    [zam] = await wait_zam(dpi, sent.cid)
    assert zam.status.success
    # The DPI has the ZAM before the platform has recorded its answer: wait for it, as the other tests do.
    await wait_status(rt, uid(n), {"acknowledged"})
    [entry] = await inspect(rt, ins)
    assert entry["uniqueId"] == uid(n) and entry["status"] == "Approved"


async def test_patient_opposed_to_the_feeding_of_the_dmp(platform: tuple[Runtime, DpiListener]) -> None:
    rt, dpi = platform
    ipp, ins = f"O{new_number()[:8]}", _ins("2610459350124")
    zfa = "ZFA|ACTIF|20240101||Y|20240101|N|N|20240101|IO|20240101"
    created = await send_raw(rt, adt("A28", f"A28-{ipp}", pid_segment(ipp, ins=ins, status="VALI"), zfa))
    assert created.code == "AA"

    n = new_number()
    pid = pid_segment(ipp, ins=ins, status="VALI")
    sent = await send_raw(rt, mdm("initial", n, pid=pid, cda_replacements={INS: ins}))
    assert sent.code == "AA"
    [zam] = await wait_zam(dpi, sent.cid)
    assert not zam.status.success
    assert len(zam.status.errors) == 1 and "opposé" in zam.status.errors[0].label
    doc = document(rt, uid(n))
    assert doc.status == "opposition" and doc.deliveries == []
    assert await dmp_calls(rt, "iti41") == [] and await inspect(rt, ins) == []


async def test_processing_run_again_after_delivery_keeps_the_document_where_it_stands(
    platform: tuple[Runtime, DpiListener], schematron_cache: Path
) -> None:
    """After a crash a processing job can be leased again once its document is delivered: no step backwards."""
    from opensegur.content.validation import CdaValidator
    from opensegur.flows.dmp_feed import ProcessContext, process_document

    rt, _dpi = platform
    n = new_number()
    assert (await send_raw(rt, mdm("initial", n))).code == "AA"
    doc = await wait_status(rt, uid(n), {"acknowledged"})
    ctx = ProcessContext(rt.db, CdaValidator(schematron_cache / "schematron"))
    assert await asyncio.to_thread(process_document, ctx, doc.id) == "acknowledged"
    again = document(rt, uid(n))
    assert again.status == "acknowledged" and [d["status"] for d in again.deliveries] == ["delivered"]
    assert len(await entries_for(rt, uid(n))) == 1
