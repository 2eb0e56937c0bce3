"""The DICAH page: real figures for the demo hospital, each with its explanation and next step."""

from __future__ import annotations

import html
from dataclasses import replace

import httpx
import pytest
from sqlalchemy import func, select

from opensegur.ops.demo_accounts import load_demo_accounts
from opensegur.ops.demo_stays import load_demo_stays
from opensegur.security.defaults import default_matrix
from opensegur.security.matrix import Assignment, Scope
from opensegur.store.models import Account, Patient
from opensegur.web.app import create_app
from opensegur.web.readiness import indicators
from tests.actors import EVERYONE, act_as
from tests.web.test_rest_intake import Offline

pytestmark = pytest.mark.requirement("DICAH-READINESS")


async def test_the_page_shows_the_five_conditions_measured_on_the_demo(offline: Offline) -> None:
    load_demo_accounts(offline.db)
    load_demo_stays(offline.db)
    app = act_as(create_app(offline), EVERYONE)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://opensegur.test"
    ) as c:
        page = await c.get("/pilotage/dicah")
    assert page.status_code == 200
    text = html.unescape(page.text)
    for letter in "dicah":
        assert f'id="dicah-{letter}"' in page.text
    with offline.db.session() as s:
        active = s.scalar(select(func.count()).select_from(Patient).where(Patient.active.is_(True)))
        qualified = s.scalar(
            select(func.count())
            .select_from(Patient)
            .where(Patient.active.is_(True), Patient.status == "QUAL")
        )
        accounts = s.scalar(select(func.count()).select_from(Account).where(Account.active.is_(True)))
        found = {i.letter: i for i in indicators(s, offline.settings, default_matrix())}
    assert f"{qualified} identité(s) active(s) sur {active}" in text
    assert found["I"].value == pytest.approx(qualified / active)
    assert found["D"].value == 0.0 and found["D"].level_label == "Insuffisant"  # sandbox identifiers only
    assert [b.detail for b in found["D"].bars][:2] == ["valeur du bac à sable, à remplacer"] * 2
    assert f"sur {accounts} peuvent ouvrir une session forte" in text
    assert 0 < found["A"].value < 1  # some demo accounts have no second factor
    assert 0 < found["C"].value <= 1 and found["C"].bars  # demo stays, demo consents
    assert found["H"].bars[0].value == 1.0 and "Médecin" in found["H"].bars[0].detail


async def test_a_clinician_does_not_see_it(offline: Offline) -> None:
    doctor = replace(EVERYONE, assignments=(Assignment("medecin", Scope("ght")),))
    app = act_as(create_app(offline), doctor)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://opensegur.test"
    ) as c:
        assert (await c.get("/pilotage/dicah")).status_code == 403
