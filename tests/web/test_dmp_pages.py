"""The DMP tab of a patient: status, documents, viewer — through the platform's DMP client in mode AIR against the
sandbox DMP, as a doctor, a secretary, a doctor without RPPS, for patients without consent or qualified INS."""

from __future__ import annotations

import base64
import datetime as dt
import html
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from opensegur.connectors.annuaire_client import AnnuaireClient
from opensegur.connectors.dmp_client import (
    DmpClient,
    DmpCredentials,
    DmpEndpoints,
    DmpIdentity,
    vihf_specialty,
)
from opensegur.content import jdv
from opensegur.errors import RetryLater
from opensegur.flows.dmp_prefetch import make_prefetch_handler
from opensegur.flows.jobs import JobKind
from opensegur.ops.demo import demo_dmp_patients, luhn_complete
from opensegur.ops.demo_accounts import SITE_1
from opensegur.sandbox.annuaire import SANDBOX_API_KEY
from opensegur.sandbox.dmp import REPOSITORY_UNIQUE_ID, create_dmp_app
from opensegur.sandbox.dmp.patients import PatientRegistry, default_patients
from opensegur.security.actor import Actor
from opensegur.security.defaults import default_matrix
from opensegur.security.matrix import Assignment, Scope
from opensegur.security.pki import TestPki, ensure_test_pki
from opensegur.store import jobs
from opensegur.store.models import Account, AuditEvent, Document, Job, Patient
from opensegur.web.app import create_app
from opensegur.web.deps import get_directory, get_dmp
from opensegur.web.documents import dtm_fr
from tests.actors import act_as
from tests.annuaire.conftest import BASE as ANNUAIRE
from tests.annuaire.conftest import sandbox_app
from tests.sandbox_dmp.helpers import author, iti41, metadata, new_oid, post, registry_result
from tests.web.test_rest_intake import Offline

pytestmark = pytest.mark.requirement("DMP-CONSULT-AIR")

EXAMPLES = Path("/work/shared/cisis/ExemplesCDA")
CR_BIO_N3 = EXAMPLES / "BIO-CR-BIO_2024.01_TSH_1.xml"
CR_BIO_N1 = EXAMPLES / "BIO-CR-BIO_2021.01_CDA-R2-Niveau-1.xml"
needs_examples = pytest.mark.skipif(not EXAMPLES.exists(), reason="ANS CDA examples not available")
BASE = "http://dmp.test/dmp"


# Dr RÉAULT of the demo: the sandbox Annuaire Santé knows his RPPS and specialty (SM14).
REAULT_RPPS = luhn_complete("1000000001")


def person(role: str, *, rpps: str | None = REAULT_RPPS, strong: bool = True) -> Actor:
    return Actor(
        kind="person",
        name=f"test.{role}",
        display_name=f"Dr Test {role}",
        assignments=(Assignment(role, Scope("ght")),),
        strong=strong,
        rpps=rpps,
        csrf_token="jeton-de-test",
    )


DOCTOR = person("medecin")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return ensure_test_pki(Path(tmp_path_factory.mktemp("dmp-consult-pki")))


@pytest.fixture
def sandbox(tmp_path: Path, pki: TestPki) -> FastAPI:
    return create_dmp_app(
        tmp_path / "sandbox", pki, patients=PatientRegistry([*default_patients(), *demo_dmp_patients()])
    )


ENDPOINTS = DmpEndpoints(
    f"{BASE}/iti41",
    f"{BASE}/iti18",
    f"{BASE}/iti57",
    f"{BASE}/iti43",
    f"{BASE}/td02",
    f"{BASE}/access-history",
)


def dmp_client(sandbox: FastAPI, pki: TestPki, endpoints: DmpEndpoints = ENDPOINTS) -> DmpClient:
    return DmpClient(
        endpoints,
        DmpCredentials(pki.signing_cert, pki.signing_key),
        DmpIdentity(oid_root="1.2.250.1.999.88"),
        transport=httpx.ASGITransport(app=sandbox),
    )


@pytest.fixture
async def dmp(sandbox: FastAPI, pki: TestPki) -> AsyncIterator[DmpClient]:
    client = dmp_client(sandbox, pki)
    yield client
    await client.aclose()


def _patient(offline: Offline, consent: str | None = "IC", status: str = "QUAL") -> Patient:
    """A demo patient with an INS and a DMP, in ``status``, with the consultation consent given."""
    with offline.db.session() as s:
        p = s.scalars(select(Patient).where(Patient.status == "QUAL").order_by(Patient.id)).first()
        assert p is not None and p.ins_matricule
        p.status = status
        p.dmp_consent = {"consultation_consent": consent} if consent else {}
        s.flush()
        s.expunge(p)
        return p


def _cx(p: Patient) -> str:
    return f"{p.ins_matricule}^^^&{p.ins_oid}&ISO^NH"


async def _feed(
    sandbox: FastAPI, pki: TestPki, p: Patient, content: bytes, created: str, title: str, **changes: Any
) -> str:
    """A document about an act of ``created`` (its serviceStartTime too: the first search is bounded on it)."""
    uid = new_oid()
    m = metadata(uid, _cx(p), creation_time=created, service_start_time=created, title=title, **changes)
    sub = iti41(pki, patient=_cx(p), docs=[(m, content)])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=sandbox), base_url="http://dmp.test") as c:
        assert registry_result(await post(c, "/dmp/iti41", sub.request)).ok
    return uid


async def _correct(
    sandbox: FastAPI, pki: TestPki, p: Patient, old_uid: str, created: str, act: str, title: str
) -> None:
    """A new version replacing the document ``old_uid`` (ITI-41 with RPLC), as its producer sends a correction."""
    new = metadata(new_oid(), _cx(p), creation_time=created, service_start_time=act, title=title)
    new.entry_uuid = f"urn:uuid:{uuid.uuid4()}"
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=sandbox), base_url="http://dmp.test") as c:
        entries = (await c.get("/dmp/inspect", params={"patient": p.ins_matricule})).json()["entries"]
        [old] = [e["entryUUID"] for e in entries if e["uniqueId"] == old_uid]
        sub = iti41(pki, patient=_cx(p), docs=[(new, CR_BIO_N3.read_bytes())], replaces={new.entry_uuid: old})
        assert registry_result(await post(c, "/dmp/iti41", sub.request)).ok


@pytest.fixture
async def directory() -> AsyncIterator[AnnuaireClient]:
    client = AnnuaireClient(ANNUAIRE, SANDBOX_API_KEY, transport=httpx.ASGITransport(app=sandbox_app()))
    yield client
    await client.aclose()


@pytest.fixture
def web(offline: Offline, dmp: DmpClient, directory: AnnuaireClient) -> Iterator[FastAPI]:
    app = create_app(offline)
    app.dependency_overrides[get_dmp] = lambda: dmp
    app.dependency_overrides[get_directory] = lambda: directory
    yield app


async def _get(app: FastAPI, actor: Actor, path: str) -> httpx.Response:
    act_as(app, actor)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://opensegur.test"
    ) as c:
        return await c.get(path)


def _text(response: httpx.Response) -> str:
    """The page as read: entities decoded (the templates escape apostrophes)."""
    return html.unescape(response.text)


def _recent(days: int) -> str:
    return (dt.datetime.now(dt.UTC) - dt.timedelta(days=days)).strftime("%Y%m%d%H%M%S")


@needs_examples
async def test_a_doctor_sees_the_status_and_two_years_of_documents_and_can_widen(
    offline: Offline, web: FastAPI, sandbox: FastAPI, pki: TestPki
) -> None:
    p = _patient(offline)
    await _feed(sandbox, pki, p, CR_BIO_N3.read_bytes(), _recent(30), "CR de biologie TSH")
    await _feed(sandbox, pki, p, CR_BIO_N1.read_bytes(), _recent(4 * 365), "CR de biologie ancien")
    # Written last week about an act of four years ago: the two-year bound is on the act (serviceStartTime).
    uid = new_oid()
    late = metadata(
        uid, _cx(p), creation_time=_recent(7), service_start_time=_recent(4 * 365), title="CR tardif"
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=sandbox), base_url="http://dmp.test") as c:
        sub = iti41(pki, patient=_cx(p), docs=[(late, CR_BIO_N3.read_bytes())])
        assert registry_result(await post(c, "/dmp/iti41", sub.request)).ok
    page = await _get(web, DOCTOR, f"/identites/{p.id}/dmp")
    assert page.status_code == 200, page.text
    assert "DMP ouvert" in page.text and "Vous êtes autorisé(e) à consulter ce DMP" in page.text
    assert "vous n'êtes pas médecin traitant DMP" in _text(page)
    assert 'id="filtre-deux-ans"' in page.text
    assert "CR de biologie TSH" in page.text and "CR de biologie ancien" not in page.text
    assert "CR tardif" not in page.text
    whole = await _get(web, DOCTOR, f"/identites/{p.id}/dmp?tout=1")
    assert (
        "CR de biologie TSH" in whole.text
        and "CR de biologie ancien" in whole.text
        and "CR tardif" in whole.text
    )
    assert 'id="derniere-consultation"' in whole.text and ">Nouveau<" not in whole.text
    # Listed by the act's date, the one the search bounds; put online last week, which the row says too.
    tardif = _text(whole).split("CR tardif")[0].rsplit("<tr", 1)[1]
    # The days as the page shows them: in Paris, which is the next day for an hour or two after 22:00 UTC.
    act, online = (dtm_fr(d).split(" ")[0] for d in (late.service_start_time, late.creation_time))
    assert "Date de l'acte" in _text(whole) and act in tardif and f"mis en ligne le {online}" in tardif
    # A document added after the last visit is marked for this doctor.
    await _feed(sandbox, pki, p, CR_BIO_N3.read_bytes(), _recent(-1), "CR arrivé depuis")
    again = await _get(web, DOCTOR, f"/identites/{p.id}/dmp")
    row = again.text.split("CR arrivé depuis")[1].split("</tr>")[0]
    assert ">Nouveau<" in row and again.text.count(">Nouveau<") == 1
    with offline.db.session() as s:
        actions = s.scalars(select(AuditEvent.action).where(AuditEvent.patient_id == p.id)).all()
    assert actions.count("consult_dmp") == 3


@needs_examples
async def test_a_level_3_document_is_shown_as_text_and_a_level_1_as_an_inert_pdf(
    offline: Offline, web: FastAPI, sandbox: FastAPI, pki: TestPki
) -> None:
    p = _patient(offline)
    hostile = CR_BIO_N3.read_bytes().replace(
        b"<title>", b"<title>&lt;script&gt;alert(1)&lt;/script&gt;", 1
    )  # markup in a sender's text is text
    n3 = await _feed(sandbox, pki, p, hostile, _recent(10), "CR TSH")
    n1 = await _feed(sandbox, pki, p, CR_BIO_N1.read_bytes(), _recent(20), "CR PDF")
    repo = REPOSITORY_UNIQUE_ID
    shown = await _get(web, DOCTOR, f"/identites/{p.id}/dmp/document?depot={repo}&uid={n3}")
    assert shown.status_code == 200, shown.text
    assert "BIOCHIMIE" in shown.text and "Thyréostimuline (TSH)" in shown.text and "1.950 mUI/l" in shown.text
    assert "<script>alert(1)" not in shown.text and "&lt;script&gt;alert(1)" in shown.text
    # The PDF copy its narrative shows in place opens apart, inert; a file it does not join is 404.
    assert "piece=doc-1" in shown.text and "Ouvrir le fichier joint « Copie du document »" in _text(shown)
    base = f"/identites/{p.id}/dmp/document?uid={n3}"
    copy = await _get(web, DOCTOR, f"{base}&piece=doc-1")
    assert copy.status_code == 200 and copy.headers["content-type"] == "application/pdf"
    assert copy.content.startswith(b"%PDF-") and "sandbox" in copy.headers["content-security-policy"]
    assert (await _get(web, DOCTOR, f"{base}&piece=doc-9")).status_code == 404
    assert (await _get(web, DOCTOR, f"{base}&piece=../x")).status_code == 422
    # A joined file that says PDF and is a page with a script is not served.
    fake = re.sub(
        rb'(ID="doc-1">\s*<value mediaType="application/pdf" representation="B64">)[^<]+',
        rb"\g<1>" + base64.b64encode(b"<html><script>alert(1)</script></html>"),
        CR_BIO_N3.read_bytes(),
    )
    faked = await _feed(sandbox, pki, p, fake, _recent(11), "CR au faux PDF")
    refused = await _get(web, DOCTOR, f"/identites/{p.id}/dmp/document?uid={faked}&piece=doc-1")
    assert refused.status_code == 415 and b"alert(1)" not in refused.content
    pdf = await _get(web, DOCTOR, f"/identites/{p.id}/dmp/document?depot={repo}&uid={n1}")
    assert pdf.status_code == 200 and pdf.headers["content-type"] == "application/pdf"
    assert pdf.content.startswith(b"%PDF-") and "sandbox" in pdf.headers["content-security-policy"]
    unknown = await _get(web, DOCTOR, f"/identites/{p.id}/dmp/document?depot={repo}&uid=1.2.3.4")
    assert unknown.status_code == 502 and "n'est pas, ou plus, dans le DMP" in _text(unknown)


@pytest.mark.parametrize(
    ("consent", "status", "reason"),
    [
        (None, "QUAL", "Consentement à la consultation non recueilli"),
        ("NA", "QUAL", "Consentement à la consultation non recueilli"),
        ("INC", "QUAL", "Le patient a refusé la consultation de son DMP"),
        ("IC", "VALI", "Identité non qualifiée"),
    ],
)
async def test_no_dmp_call_without_consent_or_qualified_ins(
    offline: Offline, web: FastAPI, consent: str | None, status: str, reason: str
) -> None:
    p = _patient(offline, consent, status)
    page = await _get(web, DOCTOR, f"/identites/{p.id}/dmp")
    assert page.status_code == 409 and reason in _text(page) and 'id="refus"' in page.text
    with offline.db.session() as s:
        [event] = s.scalars(select(AuditEvent).where(AuditEvent.action == "consult_dmp")).all()
    assert event.detail is not None and reason in event.detail["refus"]


async def test_who_may_not_consult(offline: Offline, web: FastAPI) -> None:
    p = _patient(offline)
    secretary = await _get(web, person("secretaire_medicale"), f"/identites/{p.id}/dmp")
    assert secretary.status_code == 403 and "Consulter le DMP".lower() in secretary.text.lower()
    weak = await _get(web, person("medecin", strong=False), f"/identites/{p.id}/dmp")
    assert weak.status_code == 403 and "Authentification forte requise" in weak.text
    no_rpps = await _get(web, person("medecin", rpps=None), f"/identites/{p.id}/dmp")
    assert no_rpps.status_code == 409 and "pas de numéro RPPS" in _text(no_rpps)
    unknown = await _get(web, person("medecin", rpps=luhn_complete("1999999999")), f"/identites/{p.id}/dmp")
    assert (
        unknown.status_code == 409
        and "Aucune spécialité n'est enregistrée dans l'Annuaire Santé" in _text(unknown)
    )
    # Each refusal is one audit entry saying why; none counts as a consultation.
    with offline.db.session() as s:
        events = s.scalars(select(AuditEvent).where(AuditEvent.action == "consult_dmp")).all()
    assert len(events) == 2 and all(e.detail and "refus" in e.detail for e in events)


async def test_a_dmp_that_does_not_answer_is_said_so(offline: Offline, directory: AnnuaireClient) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connexion refusée", request=request)

    pki_dir = offline.settings.data_dir / "pki"
    pki = ensure_test_pki(pki_dir)
    down = DmpClient(
        DmpEndpoints(
            f"{BASE}/iti41",
            f"{BASE}/iti18",
            f"{BASE}/iti57",
            f"{BASE}/iti43",
            f"{BASE}/td02",
            f"{BASE}/access-history",
        ),
        DmpCredentials(pki.signing_cert, pki.signing_key),
        DmpIdentity(oid_root="1.2.250.1.999.88"),
        transport=httpx.MockTransport(refuse),
    )
    app = create_app(offline)
    app.dependency_overrides[get_dmp] = lambda: down
    app.dependency_overrides[get_directory] = lambda: directory
    p = _patient(offline)
    page = await _get(app, DOCTOR, f"/identites/{p.id}/dmp")
    await down.aclose()
    assert (
        page.status_code == 502 and "DMP indisponible" in page.text and 'id="documents-dmp"' not in page.text
    )


async def test_the_patient_page_offers_the_shortcuts_to_who_may_consult(
    offline: Offline, web: FastAPI
) -> None:
    p = _patient(offline)
    page = await _get(web, DOCTOR, f"/identites/{p.id}")
    assert 'id="raccourcis-documentaires"' in page.text and f'href="/identites/{p.id}/dmp"' in page.text
    assert "Consentement à la consultation recueilli" in _text(page)
    secretary = await _get(web, person("secretaire_medicale"), f"/identites/{p.id}")
    assert secretary.status_code == 200 and "raccourcis-documentaires" not in secretary.text


@needs_examples
async def test_bris_de_glace_reaches_the_dmp_in_that_mode_without_consent(
    offline: Offline, web: FastAPI, sandbox: FastAPI, pki: TestPki
) -> None:
    p = _patient(offline, consent="NA")
    await _feed(sandbox, pki, p, CR_BIO_N3.read_bytes(), _recent(5), "CR des urgences")
    # A doctor of another unit: no care relationship with this patient.
    outsider = replace(DOCTOR, assignments=(Assignment("medecin", Scope("unit", SITE_1, "9999")),))
    refused = await _get(web, outsider, f"/identites/{p.id}/dmp")
    assert refused.status_code == 403 and "bris de glace" in _text(refused)
    # The form brings the doctor back to the page he asked for, and to no other address.
    assert f'name="suite" value="/identites/{p.id}/dmp"' in refused.text
    act_as(web, outsider)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=web), base_url="http://opensegur.test"
    ) as c:
        landed = {}
        for suite in (f"/identites/{p.id}/dmp", "//evil.example/x", f"/identites/{p.id}/../../admin"):
            broke = await c.post(
                f"/identites/{p.id}/bris-de-glace",
                data={"motif": "Patient inconscient aux urgences, antécédents inconnus", "suite": suite},
                headers={"x-csrf-token": "jeton-de-test"},
            )
            assert broke.status_code == 303
            landed[suite] = broke.headers["location"]
    assert list(landed.values()) == [f"/identites/{p.id}/dmp", f"/identites/{p.id}", f"/identites/{p.id}"]
    page = await _get(web, outsider, f"/identites/{p.id}/dmp")
    assert page.status_code == 200 and 'id="bris-de-glace"' in page.text and "CR des urgences" in page.text
    assert "l'autorisation d'accès du patient n'est pas requise" in _text(page)
    with offline.db.session() as s:
        [event] = s.scalars(
            select(AuditEvent).where(AuditEvent.action == "consult_dmp", AuditEvent.patient_id == p.id)
        ).all()
    assert event.detail == {"mode": "bris_de_glace"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=sandbox), base_url="http://dmp.test") as c:
        history = (await c.get("/dmp/access-history", params={"patient": p.ins_matricule})).json()["accesses"]
    consultations = [h for h in history if h["transaction"] in ("td02", "iti18")]
    assert consultations and {h["purpose_of_use"] for h in consultations} == {"bris_de_glace"}
    assert {h["authentication_mode"] for h in consultations} == {"INDIRECTE_RENFORCEE"}


@needs_examples
async def test_a_regulator_consults_in_the_centre_15_mode_unless_the_patient_opposed_it(
    offline: Offline, web: FastAPI, sandbox: FastAPI, pki: TestPki
) -> None:
    p = _patient(offline, consent="NA")  # regulation cannot ask the patient
    await _feed(sandbox, pki, p, CR_BIO_N3.read_bytes(), _recent(3), "Bilan biologique récent")
    # Dr BRUNET of the demo, regulator: the sandbox Annuaire Santé knows his specialty.
    regulator = replace(
        DOCTOR,
        name="test.regulateur",
        assignments=(Assignment("regulateur", Scope("ght")),),
        rpps=luhn_complete("1000000006"),
    )
    page = await _get(web, regulator, f"/identites/{p.id}/dmp")
    assert page.status_code == 200 and 'id="centre-15"' in page.text and 'id="bris-de-glace"' not in page.text
    assert "Bilan biologique récent" in page.text
    with offline.db.session() as s:
        [event] = s.scalars(
            select(AuditEvent).where(AuditEvent.action == "consult_dmp", AuditEvent.patient_id == p.id)
        ).all()
    assert event.detail == {"mode": "centre_15"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=sandbox), base_url="http://dmp.test") as c:
        history = (await c.get("/dmp/access-history", params={"patient": p.ins_matricule})).json()["accesses"]
        assert {h["purpose_of_use"] for h in history if h["transaction"] == "iti18"} == {"centre_15"}
        opposed = await c.put(
            "/dmp/_admin/patients",
            json={"matricule": p.ins_matricule, "oid": p.ins_oid, "opposition_centre_15": True},
        )
        assert opposed.status_code == 200
    refused = await _get(web, regulator, f"/identites/{p.id}/dmp")
    assert 'id="refus-mode"' in refused.text and "centre de régulation" in _text(refused)
    assert "Bilan biologique récent" not in refused.text
    # The same regulation right is not a doctor's: Dr RÉAULT, outside his unit, is sent to the bris de glace.
    outsider = replace(DOCTOR, assignments=(Assignment("medecin", Scope("unit", SITE_1, "9999")),))
    assert (await _get(web, outsider, f"/identites/{p.id}/dmp")).status_code == 403


@needs_examples
async def test_the_access_history_shows_who_consulted_in_which_mode(
    offline: Offline, web: FastAPI, sandbox: FastAPI, pki: TestPki
) -> None:
    p = _patient(offline)
    await _feed(sandbox, pki, p, CR_BIO_N3.read_bytes(), _recent(2), "Bilan de sortie")
    assert (await _get(web, DOCTOR, f"/identites/{p.id}/dmp")).status_code == 200
    page = await _get(web, DOCTOR, f"/identites/{p.id}/dmp/acces")
    assert page.status_code == 200 and 'aria-current="page">Historique des accès' in page.text
    rows = _text(page).split('<table id="historique-acces">', 1)[1]
    # Newest first: the doctor's search, then the status check, then the feed that deposited the document.
    first, second = rows.index("Recherche de documents"), rows.index("Vérification du statut du DMP")
    assert first < second < rows.index("Alimentation (dépôt d'un document)")
    assert "Dr Test medecin" in rows and "(logiciel, sans professionnel)" in rows
    # The DMP in production publishes no access history: the page says where to find it.
    production = dmp_client(sandbox, pki, replace(ENDPOINTS, access_history=None))
    web.dependency_overrides[get_dmp] = lambda: production
    none = await _get(web, DOCTOR, f"/identites/{p.id}/dmp/acces")
    await production.aclose()
    assert none.status_code == 200 and 'id="historique-indisponible"' in none.text


@needs_examples
async def test_the_search_form_and_the_replaced_versions(
    offline: Offline, web: FastAPI, sandbox: FastAPI, pki: TestPki
) -> None:
    p = _patient(offline)
    old_uid = await _feed(sandbox, pki, p, CR_BIO_N3.read_bytes(), _recent(40), "Bilan initial")
    await _correct(sandbox, pki, p, old_uid, _recent(1), _recent(40), "Bilan corrigé")
    current = _text(await _get(web, DOCTOR, f"/identites/{p.id}/dmp"))
    assert "Bilan corrigé" in current and "Bilan initial" not in current
    both = _text(await _get(web, DOCTOR, f"/identites/{p.id}/dmp?versions=1"))
    assert 'id="avec-versions"' in both and "Version remplacée" in both.split("Bilan initial", 1)[1][:200]
    assert f"uid={old_uid}" in both
    # TD3.1 criteria: a type the DMP filters on, and the act's dates.
    bio = await _get(web, DOCTOR, f"/identites/{p.id}/dmp?type=11490-0&du={_day(60)}&au={_day(0)}")
    assert bio.status_code == 200 and "Bilan corrigé" in _text(bio) and 'id="recherche-resultat"' in bio.text
    other_type = _text(await _get(web, DOCTOR, f"/identites/{p.id}/dmp?type=11488-4"))
    assert "Bilan corrigé" not in other_type and 'id="aucun-document"' in other_type
    # The form as a browser sends it, empty fields included.
    empty = await _get(web, DOCTOR, f"/identites/{p.id}/dmp?type=&du=&au=&auteur=&visibilite=")
    assert empty.status_code == 200 and 'id="filtre-deux-ans"' in empty.text
    bad_queries = ("type=PAS-UN-TYPE", f"du={_day(0)}&au={_day(10)}", "du=2026-02-31", "visibilite=<script>")
    for bad in bad_queries:
        assert (await _get(web, DOCTOR, f"/identites/{p.id}/dmp?{bad}")).status_code == 422


async def _queries(sandbox: FastAPI) -> list[str]:
    """The stored queries the sandbox DMP answered since the last call of this helper."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=sandbox), base_url="http://dmp.test") as c:
        calls = (await c.get("/dmp/_admin/calls")).json()
        await c.delete("/dmp/_admin/calls")
    return [call["query"] for call in calls if call.get("query")]


@needs_examples
async def test_a_later_opening_asks_the_dmp_only_what_changed_since_and_actualiser_searches_again(
    offline: Offline, web: FastAPI, sandbox: FastAPI, pki: TestPki
) -> None:
    p = _patient(offline)
    first_uid = await _feed(sandbox, pki, p, CR_BIO_N3.read_bytes(), _recent(40), "Bilan initial")
    await _feed(sandbox, pki, p, CR_BIO_N3.read_bytes(), _recent(50), "Bilan inchangé")
    await _queries(sandbox)
    first = _text(await _get(web, DOCTOR, f"/identites/{p.id}/dmp"))
    assert "Bilan initial" in first and 'id="liste-gardee"' not in first
    assert await _queries(sandbox) == ["FIND_DOCUMENTS"]
    # Since: a new report, and a correction of the first one (RPLC).
    await _feed(sandbox, pki, p, CR_BIO_N3.read_bytes(), _recent(1), "Bilan du jour")
    await _correct(sandbox, pki, p, first_uid, _recent(0), _recent(40), "Bilan corrigé")
    await _queries(sandbox)
    later = _text(await _get(web, DOCTOR, f"/identites/{p.id}/dmp"))
    assert await _queries(sandbox) == [
        "FIND_SUBMISSION_SETS",
        "GET_ASSOCIATIONS",
        "GET_DOCUMENTS_AND_ASSOCIATIONS",
    ]
    listed = later.split('id="documents-dmp"', 1)[1]
    assert "Bilan du jour" in listed and "Bilan corrigé" in listed and "Bilan inchangé" in listed
    assert "Bilan initial" not in listed
    # Added: the new report and the correction; withdrawn: the replaced version.
    assert (
        'id="liste-gardee"' in later
        and "2 documents nouveaux ou mis à jour, 1 retiré ou remplacé" in later
        and "Liste de votre consultation" in later
    )
    again = _text(await _get(web, DOCTOR, f"/identites/{p.id}/dmp"))
    # The sets of the last minute are asked again (a DMP clock slightly behind): applying them twice is harmless.
    asked = await _queries(sandbox)
    assert (
        "aucun changement" in again and asked[0] == "FIND_SUBMISSION_SETS" and "FIND_DOCUMENTS" not in asked
    )
    fresh = _text(await _get(web, DOCTOR, f"/identites/{p.id}/dmp?actualiser=1"))
    assert 'id="liste-gardee"' not in fresh and await _queries(sandbox) == ["FIND_DOCUMENTS"]
    assert fresh.split('id="documents-dmp"', 1)[1].count("<tr") == listed.count("<tr")
    # A search the professional narrowed is asked of the DMP as such, and keeps nothing.
    await _get(web, DOCTOR, f"/identites/{p.id}/dmp?tout=1")
    assert await _queries(sandbox) == ["FIND_DOCUMENTS"]
    assert "aucun changement" in _text(await _get(web, DOCTOR, f"/identites/{p.id}/dmp"))


PV1_DOCTOR_RPPS = "01234567897"  # PV1-7 of the ANS PAM FR consent examples: 801234567897, Réault Pierre


@dataclass(frozen=True)
class _Practitioner:
    specialty_code: str = "SM14"
    specialty: str = "Chirurgie viscérale et digestive"


class _Directory:
    """The Annuaire Santé for the examples' doctor, whom the sandbox directory does not list."""

    async def practitioner(self, rpps: str) -> _Practitioner | None:
        return _Practitioner() if rpps == PV1_DOCTOR_RPPS else None


def _admit(offline: Offline, control: bytes) -> Patient:
    """The ANS A01 with consent (ZFA IC), PV1-7 naming Dr Réault by idNat_PS, under a fresh control id."""
    raw = (CONSENT_EXAMPLES / "ConsentementConsultation_NonOppositionAlimentation.er7").read_bytes()
    ack = offline.intake.handle(raw.replace(b"|3975|", b"|" + control + b"|", 1))
    assert ack.ack_code == "AA", ack
    with offline.db.session() as s:
        p = s.scalars(select(Patient).where(Patient.ins_matricule == "279035121518989")).one()
        s.expunge(p)
        return p


async def _run_prefetch(offline: Offline, dmp: DmpClient) -> list[dict[str, Any]]:
    """The queued prefetch jobs run as a worker runs them: each one's result, or the retry it asks for."""
    handler = make_prefetch_handler(offline.db, dmp, partial(vihf_specialty, _Directory()), default_matrix)
    results: list[dict[str, Any]] = []
    while True:
        with offline.db.session() as s:
            job = jobs.claim(s, "test", [JobKind.DMP_PREFETCH], 60)
            if job is None:
                return results
            s.expunge(job)
        try:
            results.append(await handler(job))
        except RetryLater as exc:
            with offline.db.session() as s:
                status = jobs.fail(s, s.get(Job, job.id), str(exc), jobs.RetryPolicy())
            results.append({"retry": str(exc), "status": status})
            continue
        with offline.db.session() as s:
            jobs.complete(s, job.id, results[-1])


@needs_examples
async def test_an_admission_prepares_the_dmp_list_for_the_doctor_pv1_names(
    offline: Offline, web: FastAPI, sandbox: FastAPI, pki: TestPki, dmp: DmpClient
) -> None:
    first = _admit(offline, b"PREFETCH-1")
    # A doctor with no account here: nothing is asked of the DMP in anyone's name.
    assert await _run_prefetch(offline, dmp) == [{"skipped": "aucun compte actif pour ce RPPS"}]
    with offline.db.session() as s:
        finess = s.get(Patient, first.id).structure.finess
        s.add(
            Account(
                login="dr.reault.chir",
                display_name="Dr Pierre RÉAULT",
                rpps=PV1_DOCTOR_RPPS,
                assignments=[{"role": "medecin", "scope": f"unit:{finess}/6268"}],
            )
        )
    await _feed(sandbox, pki, first, CR_BIO_N3.read_bytes(), _recent(30), "Bilan préopératoire")
    p = _admit(offline, b"PREFETCH-2")
    # The stay the A01 records in UF 6268 is the care relationship the doctor's unit scope needs.
    assert await _run_prefetch(offline, dmp) == [{"documents": 1, "pour": "dr.reault.chir"}]
    with offline.db.session() as s:
        audited = s.scalars(select(AuditEvent).where(AuditEvent.action == "prefetch_dmp")).one()
        assert audited.actor == "prefetch" and audited.detail == {"pour": "dr.reault.chir"}
        assert audited.patient_id == p.id
    await _queries(sandbox)
    doctor = replace(person("medecin", rpps=PV1_DOCTOR_RPPS), name="dr.reault.chir")
    web.dependency_overrides[get_directory] = _Directory
    page = _text(await _get(web, doctor, f"/identites/{p.id}/dmp"))
    assert "Liste préparée à l'admission du patient" in page and "Bilan préopératoire" in page
    assert "FIND_DOCUMENTS" not in await _queries(sandbox)
    # The same message again queues nothing more.
    _admit(offline, b"PREFETCH-2")
    assert await _run_prefetch(offline, dmp) == []
    # A DMP that does not answer: the job fails to be retried later, with the worker's backoff.
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=sandbox), base_url="http://dmp.test") as c:
        fault = {"http_status": 503, "transactions": ["td02"], "count": 1}
        assert (await c.post("/dmp/_admin/faults", json=fault)).status_code == 200
    _admit(offline, b"PREFETCH-4")
    [retried] = await _run_prefetch(offline, dmp)
    assert retried["retry"].startswith("DMP injoignable") and retried["status"] == "pending"
    # A doctor out of the unit gets nothing prepared.
    with offline.db.session() as s:
        in_unit = s.scalars(select(Account).where(Account.login == "dr.reault.chir")).one()
        in_unit.assignments = [{"role": "medecin", "scope": f"unit:{finess}/9999"}]
    _admit(offline, b"PREFETCH-3")
    assert await _run_prefetch(offline, dmp) == [
        {"skipped": "le médecin responsable n'a pas accès à ce patient"}
    ]


def _day(days_ago: int) -> str:
    return (dt.date.today() - dt.timedelta(days=days_ago)).isoformat()


async def _post_then_follow(app: FastAPI, actor: Actor, path: str, data: dict[str, str]) -> httpx.Response:
    """A form posted as the browser does, then the page it redirects to (with the message it left)."""
    act_as(app, actor)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://opensegur.test"
    ) as c:
        posted = await c.post(path, data=data, headers={"x-csrf-token": "jeton-de-test"})
        if posted.status_code != 303:
            return posted
        return await c.get(posted.headers["location"])


@needs_examples
async def test_the_author_masks_changes_visibility_and_deletes_and_the_list_follows(
    offline: Offline, web: FastAPI, sandbox: FastAPI, pki: TestPki
) -> None:
    p = _patient(offline)
    with offline.db.session() as s:
        structure = "1" + s.get(Patient, p.id).structure.finess
    mine = await _feed(
        sandbox,
        pki,
        p,
        CR_BIO_N3.read_bytes(),
        _recent(3),
        "Mon compte rendu",
        authors=[author(structure=structure, ps="8" + REAULT_RPPS)],
    )
    theirs = await _feed(sandbox, pki, p, CR_BIO_N3.read_bytes(), _recent(4), "Compte rendu du laboratoire")
    page = _text(await _get(web, DOCTOR, f"/identites/{p.id}/dmp"))
    row = page.split("Mon compte rendu", 1)[1].split("</tr>", 1)[0]
    assert "Actions de l'auteur" in row and "Masquer aux professionnels" in row and "Supprimer du DMP" in row
    assert "Actions de l'auteur" not in page.split("Compte rendu du laboratoire", 1)[1].split("</tr>", 1)[0]

    async def act(action: str, uid: str = mine) -> str:
        path = f"/identites/{p.id}/dmp/document/action"
        followed = await _post_then_follow(web, DOCTOR, path, {"uid": uid, "action": action})
        assert followed.status_code == 200 and followed.url.path == f"/identites/{p.id}/dmp"
        return _text(followed)

    after = await act("masquer")
    assert "Document masqué aux professionnels" in after
    row = after.split("Mon compte rendu", 1)[1].split("</tr>", 1)[0]
    assert "MASQUE_PS" in row or "Masqué" in row
    assert "Rendre visible aux professionnels" in row and "Masquer aux professionnels" not in row
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=sandbox), base_url="http://dmp.test") as c:
        entries = (await c.get("/dmp/inspect", params={"patient": p.ins_matricule})).json()["entries"]
    assert {(e["version"], e["status"]) for e in entries if e["uniqueId"] == mine} == {
        (1, "Deprecated"),
        (2, "Approved"),
    }
    assert "Mon compte rendu" in (await act("demasquer"))
    hidden = await act("invisible_patient")
    assert "Rendre visible au patient" in hidden.split("Mon compte rendu", 1)[1].split("</tr>", 1)[0]
    refused = await act("masquer", theirs)
    assert "Seul l'auteur du document" in refused
    gone = await act("supprimer")
    assert (
        "Document supprimé du DMP" in gone
        and "Mon compte rendu" not in gone.split('id="documents-dmp"', 1)[1]
    )
    assert (await act("masquer")).count("plus, une version en vigueur") == 1
    forged = await _post_then_follow(
        web, DOCTOR, f"/identites/{p.id}/dmp/document/action", {"uid": theirs, "action": "effacer_tout"}
    )
    assert forged.status_code == 422
    with offline.db.session() as s:
        outcomes = [
            e.detail
            for e in s.scalars(
                select(AuditEvent).where(AuditEvent.action == "dmp_author_action").order_by(AuditEvent.id)
            )
        ]
    assert [d["action"] for d in outcomes] == [
        "masquer",
        "demasquer",
        "invisible_patient",
        "masquer",
        "supprimer",
        "masquer",
    ]
    assert [bool(d.get("refus")) for d in outcomes] == [False, False, False, True, False, True]


@needs_examples
async def test_a_document_the_record_already_holds_is_shown_once_from_its_local_copy(
    offline: Offline, web: FastAPI, sandbox: FastAPI, pki: TestPki
) -> None:
    p = _patient(offline)
    here = await _feed(sandbox, pki, p, CR_BIO_N3.read_bytes(), _recent(2), "Reçu aussi par MSSanté")
    elsewhere = await _feed(sandbox, pki, p, CR_BIO_N3.read_bytes(), _recent(3), "Seulement dans le DMP")
    with offline.db.session() as s:
        patient = s.get(Patient, p.id)
        other = s.scalars(select(Patient).where(Patient.id != p.id)).first()
        assert patient is not None and other is not None
        local = Document(
            structure_id=patient.structure_id,
            patient_id=p.id,
            source="mssante",
            kind="initial",
            unique_id=here,
        )
        # Another patient's document that happens to share a uniqueId says nothing about this one.
        foreign = Document(
            structure_id=other.structure_id,
            patient_id=other.id,
            source="hl7",
            kind="initial",
            unique_id=elsewhere,
        )
        s.add_all([local, foreign])
        s.flush()
        local_id = local.id
    page = _text(await _get(web, DOCTOR, f"/identites/{p.id}/dmp"))
    assert page.count("Reçu aussi par MSSanté") == 1
    row = page.split("Reçu aussi par MSSanté", 1)[1].split("</tr>", 1)[0]
    assert "Déjà dans le dossier local" in row and f'href="/documents/{local_id}"' in row
    assert "Déjà dans le dossier local" not in page.split("Seulement dans le DMP", 1)[1].split("</tr>", 1)[0]


async def test_the_consent_is_recorded_from_the_page_and_audited(offline: Offline, web: FastAPI) -> None:
    p = _patient(offline, consent=None)
    page = await _get(web, DOCTOR, f"/identites/{p.id}/dmp")
    assert page.status_code == 409 and 'id="recueil-consentement"' in page.text
    act_as(web, DOCTOR)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=web), base_url="http://opensegur.test"
    ) as c:
        bad = await c.post(
            f"/identites/{p.id}/consentement-dmp",
            data={"consentement": "OUI"},
            headers={"x-csrf-token": "jeton-de-test"},
        )
        assert bad.status_code == 422
        done = await c.post(
            f"/identites/{p.id}/consentement-dmp",
            data={"consentement": "IC"},
            headers={"x-csrf-token": "jeton-de-test"},
        )
    assert done.status_code == 303 and done.headers["location"] == f"/identites/{p.id}/dmp"
    with offline.db.session() as s:
        stored = s.get_one(Patient, p.id).dmp_consent
        [event] = s.scalars(select(AuditEvent).where(AuditEvent.action == "dmp_consent")).all()
    assert stored["consultation_consent"] == "IC" and len(stored["consultation_consent_date"]) == 14
    assert event.detail == {"avant": "NA", "apres": "IC"} and event.patient_id == p.id
    assert (await _get(web, DOCTOR, f"/identites/{p.id}/dmp")).status_code == 200


VAC = EXAMPLES / "VAC_2023.01.xml"
VAC_NOTE = EXAMPLES / "VAC-NOTE_2023.01.xml"


@needs_examples
async def test_the_carnet_de_vaccination_gathers_the_vaccination_documents_once_each(
    offline: Offline, web: FastAPI, sandbox: FastAPI, pki: TestPki
) -> None:
    p = _patient(offline)
    types = jdv.load_value_set(jdv.JDV_TYPE_CODE).codes
    for path, code in ((VAC, "11369-6"), (VAC_NOTE, "87273-9")):
        uid = new_oid()
        m = metadata(
            uid, _cx(p), type_code=types[code], creation_time=_recent(9 * 365), title=types[code].display
        )
        sub = iti41(pki, patient=_cx(p), docs=[(m, path.read_bytes())])
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=sandbox), base_url="http://dmp.test"
        ) as c:
            assert registry_result(await post(c, "/dmp/iti41", sub.request)).ok
    await _feed(sandbox, pki, p, CR_BIO_N3.read_bytes(), _recent(3), "CR sans vaccination")
    page = await _get(web, DOCTOR, f"/identites/{p.id}/dmp/vaccinations")
    assert page.status_code == 200, page.text
    table = _text(page).split('id="carnet"')[1]
    rows = table.count("<tr>") - 1
    # VAC's four injections; the note's tetanus injection (same day, same lot) is one of them.
    assert (
        rows == 4 and "Vaccin antituberculeux" in table and "Charles MULLER" in table and "4456672" in table
    )
    assert table.index("09/04/2021") < table.index("28/09/2009") < table.index("1975")  # newest first
    csv_page = await _get(web, DOCTOR, f"/identites/{p.id}/dmp/vaccinations?format=csv")
    assert (
        csv_page.headers["content-type"].startswith("text/csv")
        and "attachment" in csv_page.headers["content-disposition"]
    )
    lines = csv_page.content.decode("utf-8-sig").splitlines()
    assert lines[0].startswith("Date;Vaccin;Protège contre") and len(lines) == 5


CONSENT_EXAMPLES = Path("/work/shared/hl7v2-examples/Vague 2/Consentement_DMP_PAMFR")


@pytest.mark.skipif(not CONSENT_EXAMPLES.exists(), reason="ANS PAM FR examples not available")
@pytest.mark.parametrize(
    ("example", "allowed", "reason"),
    [
        ("ConsentementConsultation_NonOppositionAlimentation.er7", True, None),
        ("NonConsentementConsultation_NonOppositionAlimentation.er7", False, "refusé la consultation"),
        ("NonConsentementConsultation_OppositionAlimentation.er7", False, "refusé la consultation"),
        ("NonRecueillieConsentementConsultation_NonOppositionAlimentation.er7", False, "non recueilli"),
        (
            "NonRecueillieConsentementConsultation_NonRecueillieOppositionAlimentation.er7",
            False,
            "non recueilli",
        ),
    ],
)
async def test_each_pam_fr_consent_example_decides_the_dmp_tab(
    offline: Offline, web: FastAPI, example: str, allowed: bool, reason: str | None
) -> None:
    raw = (CONSENT_EXAMPLES / example).read_bytes()
    control = raw.split(b"|")[9]
    ack = offline.intake.handle(raw.replace(b"|" + control + b"|", b"|CONSENT-" + control + b"|", 1))
    assert ack.ack_code == "AA", ack
    with offline.db.session() as s:
        p = s.scalars(select(Patient).where(Patient.ins_matricule == "279035121518989")).one()
        p.status = "QUAL"  # the examples send VALI: qualified here as the INSi would, to isolate the consent
        patient_id = p.id
    page = await _get(web, DOCTOR, f"/identites/{patient_id}/dmp")
    if allowed:
        assert page.status_code == 200 and "DMP ouvert" in page.text
    else:
        assert page.status_code == 409 and reason is not None and reason in _text(page)
