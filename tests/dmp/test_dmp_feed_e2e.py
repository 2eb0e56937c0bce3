"""The DMP feed end to end: every ANS example of the volet over MLLP → ACK → XDS.b to the sandbox DMP → ZAM."""

from __future__ import annotations

from pathlib import Path

import pytest

from opensegur.server import Runtime
from opensegur.transport.mllp import send_message
from tests.dmp import helpers
from tests.dmp.helpers import (
    VOLET,
    DpiListener,
    inspect,
    send,
    wait_for,
    with_control_id,
    zams_for,
)

# The fixtures live in the helpers module.
platform = helpers.platform
schematron_cache = helpers.schematron_cache

# The ORU examples do not chain: the initial message embeds a CDA whose id is …1.1.9, the replacement names
# …1.1.12 as the document it replaces, and the deletion embeds a CDA with id …1.1.12 (the replacement is …1.1.13).
# A PFI must refuse a replacement or deletion of a document it never received (test below), so the chain is run
# with the ids corrected: the replacement replaces …1.1.9 and the deletion deletes …1.1.13.
ORU_FIXES: dict[str, dict[str, str]] = {
    "replacement": {'<id root="1.2.250.1.213.1.1.12"/>': '<id root="1.2.250.1.213.1.1.9"/>'},
    "deletion": {
        '<id root="1.2.250.1.213.1.1.12"/>': '<id root="1.2.250.1.213.1.1.13"/>',
        '<id root="1.2.250.1.213.1.1.10"/>': '<id root="1.2.250.1.213.1.1.9"/>',
    },
}


@pytest.mark.parametrize("family", ["MDM", "ORU"])
async def test_ans_examples_initial_replacement_deletion(
    platform: tuple[Runtime, DpiListener], family: str
) -> None:
    rt, dpi = platform
    folder = VOLET / family
    # The MDM folder has the same initial message twice; only the *_Base64 one carries a real CDA.
    initial = sorted((folder / f"Transmission initiale {family}").glob("message_*INIT*"))[-1]
    replacement = next((folder / f"Remplacement {family}").glob("message_*"))
    deletion = next((folder / f"Suppression {family}").glob("message_*"))

    code, cid = await send(rt, initial)
    assert code == "AA"
    await wait_for(lambda: _has_zam(dpi, cid))
    zam = zams_for(dpi, cid)[0]
    assert zam.status.success, zam
    entries = await inspect(rt)
    assert len([e for e in entries if e["status"] == "Approved"]) >= 1
    first = {e["uniqueId"] for e in entries}

    fixes = ORU_FIXES if family == "ORU" else {}
    code, cid = await send(rt, replacement, fixes.get("replacement"))
    assert code == "AA"
    await wait_for(lambda: _has_zam(dpi, cid))
    assert zams_for(dpi, cid)[0].status.success
    entries = await inspect(rt)
    assert any(e["status"] == "Deprecated" and e["uniqueId"] in first for e in entries)
    new = [e for e in entries if e["uniqueId"] not in first and e["status"] == "Approved"]
    assert len(new) == 1

    code, cid = await send(rt, deletion, fixes.get("deletion"))
    assert code == "AA"
    await wait_for(lambda: _has_zam(dpi, cid))
    assert zams_for(dpi, cid)[0].status.success
    entries = await inspect(rt)
    assert any(e["status"] == "Deleted" for e in entries)


async def _has_zam(dpi: DpiListener, cid: str) -> bool:
    return bool(zams_for(dpi, cid))


async def test_published_oru_replacement_of_an_unknown_document_is_refused(
    platform: tuple[Runtime, DpiListener],
) -> None:
    rt, _dpi = platform
    folder = VOLET / "ORU"
    assert (await send(rt, next((folder / "Transmission initiale ORU").glob("message_*"))))[0] == "AA"
    # As published, the replacement names a parent (…1.1.12) that was never sent: AE with the volet's code 900.
    raw, _cid = with_control_id(next((folder / "Remplacement ORU").glob("message_*")).read_bytes())
    ack = await send_message("127.0.0.1", rt.mllp_port or 0, raw, timeout=30)
    assert b"MSA|AE|" in ack and b"|900" in ack


async def test_without_a_zam_endpoint_nothing_waits_for_an_acknowledgement(
    tmp_path: Path, schematron_cache: Path
) -> None:
    from sqlalchemy import func, select

    from opensegur.store.models import Document, Job
    from opensegur.web.documents import timeline

    async with helpers.running_platform(tmp_path, schematron_cache, zam_endpoint=None) as (rt, dpi):
        number = helpers.new_number()
        assert (await helpers.send_raw(rt, helpers.mdm("initial", number))).code == "AA"
        sent = await helpers.wait_status(rt, helpers.uid(number), {"sent", "acknowledged"})
        assert sent.status == "sent" and sent.deliveries[0]["status"] == "delivered"
        with rt.db.session() as s:
            doc = s.get_one(Document, sent.id)
            assert doc.context["zam"] is None
            steps = timeline(doc, [])
            zam_jobs = s.scalar(select(func.count()).select_from(Job).where(Job.kind.like("%zam%")))
        # The last step of the flow view says no acknowledgement is expected, instead of waiting for ever.
        assert steps[-1]["state"] == "skipped" and "ZAM" in (steps[-1]["note"] or "")
        assert zam_jobs == 0 and dpi.messages == []
