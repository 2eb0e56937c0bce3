"""The DICAH page: real figures for the demo hospital, each with its explanation and next step."""

from __future__ import annotations

import html
import io
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from pypdf import PdfReader
from sqlalchemy import func, select

from opensegur.ops.demo_accounts import load_demo_accounts
from opensegur.ops.demo_stays import load_demo_stays
from opensegur.ops.pdf import browser
from opensegur.security.defaults import default_matrix
from opensegur.security.matrix import Assignment, Scope
from opensegur.store.models import Account, AuditEvent, Patient
from opensegur.web.app import create_app
from opensegur.web.hospiconnect import assess, measures
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


ANSWERS = {
    "sirh": "oui",
    "revue": "partiel",
    "depart": "oui",
    "postes": "oui",
    "psc": "non",
    "sso": "partiel",
}


async def test_the_hospiconnect_self_assessment_scores_both_axes(offline: Offline) -> None:
    load_demo_accounts(offline.db)
    app = act_as(create_app(offline), EVERYONE)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://opensegur.test"
    ) as c:
        form = await c.get("/pilotage/hospiconnect")
        assert form.status_code == 200 and 'id="questionnaire"' in form.text
        result = await c.post(
            "/pilotage/hospiconnect", data=ANSWERS, headers={"x-csrf-token": "jeton-de-test"}
        )
    assert result.status_code == 200 and 'id="export-pdf"' in result.text
    with offline.db.session() as s:
        expected = assess(measures(s), ANSWERS)
    for axis in ("1", "2"):
        assert f"{expected.level(axis)} · {expected.scores[axis]} / 100" in html.unescape(result.text)
    # Axis 2: the answers give (1 + 0 + ½) / 3; the demo's accounts have no PSC or SSO link.
    assert expected.scores["2"] < expected.scores["1"]


@pytest.mark.skipif(browser() is None, reason="Chromium is not installed")
async def test_the_self_assessment_exports_a_pdf_that_renders(offline: Offline, tmp_path: Path) -> None:
    load_demo_accounts(offline.db)
    app = act_as(create_app(offline), EVERYONE)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://opensegur.test"
    ) as c:
        pdf = await c.post(
            "/pilotage/hospiconnect/pdf", data=ANSWERS, headers={"x-csrf-token": "jeton-de-test"}
        )
    assert pdf.status_code == 200 and pdf.headers["content-type"] == "application/pdf"
    assert pdf.content.startswith(b"%PDF-") and "attachment" in pdf.headers["content-disposition"]
    text = "".join(page.extract_text() for page in PdfReader(io.BytesIO(pdf.content)).pages)
    assert "Auto-évaluation HospiConnect" in text and "Axe 2" in text
    if shutil.which("pdftoppm"):
        (tmp_path / "a.pdf").write_bytes(pdf.content)
        subprocess.run(
            [
                "pdftoppm",
                "-png",
                "-r",
                "50",
                "-f",
                "1",
                "-l",
                "1",
                str(tmp_path / "a.pdf"),
                str(tmp_path / "p"),
            ],
            check=True,
        )
        [png] = list(tmp_path.glob("p*.png"))
        assert png.read_bytes().startswith(b"\x89PNG")
    with offline.db.session() as s:
        assert (
            s.scalar(
                select(func.count()).select_from(AuditEvent).where(AuditEvent.action == "hospiconnect_pdf")
            )
            == 1
        )
