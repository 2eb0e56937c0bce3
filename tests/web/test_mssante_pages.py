"""MSSanté triage, patient documents and biology results: API shapes, French pages, charts and suggestions.

The app is the real one (``create_app``) on the ``db`` fixture (SQLite, and PostgreSQL when configured), with rows
inserted here: mails in triage built with the real MSSanté builders, documents of both origins, lab results.
The triage actions belong to ``flows.mss_inbound``; here a stand-in records the calls, so these tests pin the
HTTP contract (checks, French errors, delegation), not the flow.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from opensegur.config import Settings
from opensegur.flows.hl7_intake import Hl7Intake
from opensegur.store.db import Database
from opensegur.store.models import AuditEvent, Document, LabResult, Mail, Patient, Structure
from opensegur.store.payloads import store_payload
from opensegur.transactions.mss_mail import build_document_mail
from opensegur.web.app import create_app
from opensegur.web.biology import trend_chart
from opensegur.web.documents import SOURCE_LABELS
from opensegur.web.mail_triage import Candidate, IdentityHint, mail_hints, rank_candidates
from opensegur.web.patient_record import ORIGIN_LABELS, patient_sections
from opensegur.web.routes.mssante import triage_flow
from opensegur.web.templating import TEMPLATES
from tests.actors import act_as
from tests.mssante.conftest import CR_RADIO_V1, INS, PATIENT, package
from tests.web.test_rest_intake import Offline

SENDER = "dr.martin@medecin.mssante.fr"
BOX_A = "accueil@ch-test.mssante.fr"
BOX_B = "labo@ch-test.mssante.fr"


@dataclass
class World:
    app: FastAPI
    db: Database
    runtime: Offline
    patient: int  # PAT-TROIS Dominique, qualified, INS of the ANS CR d'imagerie
    twin: int  # same birth date, another name
    namesake: int  # same name, another birth date
    mail_cda: int  # triage, XDM with the CDA naming the patient
    mail_subject: int  # triage, subject only
    mail_broken: int  # triage, unreadable bytes, other mailbox
    mail_done: int  # integrated
    produced: int
    received: int


def _app(runtime: Offline) -> FastAPI:
    return act_as(create_app(runtime))  # type: ignore[no-any-return]


def _mail(**kw: Any) -> Mail:
    base: dict[str, Any] = {"direction": "in", "sender": SENDER, "recipients": [BOX_A], "mailbox": BOX_A}
    return Mail(**(base | kw))


@pytest.fixture
def world(db: Database, tmp_path: Path) -> World:
    cda = CR_RADIO_V1.read_bytes()
    with_cda = build_document_mail(
        sender=SENDER,
        recipients=[BOX_A],
        patient=PATIENT,
        document_label="CR d'imagerie médicale",
        xdm_zip=package(cda),
        body_text="Bonjour, veuillez trouver le compte rendu.",
        nil="NIL-TEST",
        ins_qualified=True,
    ).as_bytes()
    plain = EmailMessage()
    plain["From"], plain["To"] = SENDER, BOX_A
    plain["Subject"] = "XDM/1.0/DDM+CR de biologie PAT-TROIS DOMINIQUE 28/03/1979"
    plain["Message-ID"] = "<s1@medecin.mssante.fr>"
    plain.set_content("Compte rendu en pièce jointe papier.")
    subject_only = plain.as_bytes()
    now = datetime.now(UTC)
    with db.session() as s:
        site = Structure(kind="EG", finess="750000001", name="CH de test")
        s.add(site)
        s.flush()

        def person(name: str, first: str, born: date, sex: str, **kw: Any) -> Patient:
            p = Patient(
                structure_id=site.id, birth_name=name, first_names=first, birth_date=born, sex=sex, **kw
            )
            s.add(p)
            return p

        patient = person("PAT-TROIS", "DOMINIQUE", date(1979, 3, 28), "F", status="QUAL", ins_matricule=INS)
        patient.ins_oid = "1.2.250.1.213.1.4.10"
        twin = person("DURAND", "CLAIRE", date(1979, 3, 28), "F")
        namesake = person("PAT-TROIS", "DOMINIQUE", date(1980, 1, 1), "F")
        s.flush()
        m_cda = _mail(
            key="in:a:1",
            subject="XDM/1.0/DDM+CR d'imagerie médicale PAT-TROIS DOMINIQUE 28/03/1979",
            payload_sha256=store_payload(s, with_cda),
            status="triage",
            reason="INS inconnu de l'établissement",
            created_at=now - timedelta(hours=30),
        )
        m_subject = _mail(
            key="in:a:2",
            subject="XDM/1.0/DDM+CR de biologie PAT-TROIS DOMINIQUE 28/03/1979",
            payload_sha256=store_payload(s, subject_only),
            status="triage",
            reason="Aucun document CDA dans le courriel",
            created_at=now - timedelta(minutes=5),
        )
        m_broken = _mail(
            key="in:b:3",
            mailbox=BOX_B,
            subject=None,
            payload_sha256=store_payload(s, b"\x00\x01 pas un courriel"),
            status="triage",
            reason="Courriel illisible",
            created_at=now - timedelta(days=3),
        )
        produced = Document(
            structure_id=site.id,
            patient_id=patient.id,
            source="hl7",
            kind="initial",
            unique_id="1.2.250.1.999.1^A1",
            type_code="11490-0",
            title="Lettre de liaison à la sortie",
            status="acknowledged",
            created_at=now - timedelta(days=2),
        )
        received = Document(
            structure_id=site.id,
            patient_id=patient.id,
            source="mssante",
            kind="initial",
            unique_id="1.2.250.1.71.4.2.2^R1",
            type_code="11502-2",
            title="CR de biologie",
            status="integrated",
            payload_sha256=store_payload(s, cda),
            created_at=now - timedelta(days=1),
        )
        s.add_all([m_cda, m_subject, m_broken, produced, received])
        s.flush()
        m_done = _mail(
            key="in:a:4",
            subject="CR",
            status="integrated",
            patient_id=patient.id,
            document_id=received.id,
            detail={"xdm_warnings": ["Lot de soumission incomplet : <b>un seul contentTypeCode</b>"]},
        )
        s.add(m_done)
        for days, value, flag in ((60, "1.950", "N"), (30, "4.9", "H"), (1, "3.100", None)):
            s.add(
                LabResult(
                    patient_id=patient.id,
                    document_id=received.id,
                    loinc="3016-3",
                    label="Thyréostimuline [Arbitraire/Volume] Sérum/Plasma ; Numérique",
                    value=value,
                    value_num=float(value),
                    unit="m[IU]/L",
                    reference_low=0.27,
                    reference_high=4.2,
                    reference_text="0.270 – 4.200",
                    interpretation=flag,
                    observed_at=now - timedelta(days=days),
                )
            )
        s.add(
            LabResult(
                patient_id=patient.id,
                loinc="3024-7",
                label="Thyroxine libre [Masse/Volume] Sérum/Plasma ; Numérique",
                value="7.67",
                value_num=7.67,
                unit="pg/mL",
                reference_low=9.3,
                reference_high=17.0,
                interpretation="L",
                observed_at=now - timedelta(days=1),
            )
        )
        # A local code only, no flag from the lab, above its range: highlighted all the same.
        s.add(
            LabResult(
                patient_id=patient.id,
                loinc="",
                label="CRP (code local)",
                value="12.5",
                value_num=12.5,
                unit="mg/L",
                reference_high=5.0,
                observed_at=None,
            )
        )
        s.flush()
        ids = (patient.id, twin.id, namesake.id, m_cda.id, m_subject.id, m_broken.id, m_done.id)
        docs = (produced.id, received.id)
    runtime = Offline(Settings(data_dir=tmp_path), db, Hl7Intake(db))
    return World(_app(runtime), db, runtime, *ids, *docs)


@pytest.fixture
async def client(world: World) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=world.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://opensegur.test") as c:
        yield c


@dataclass
class FakeInbound:
    """Stands in for flows.mss_inbound: records each call and moves the mail as the flow would."""

    db: Database
    calls: list[tuple[Any, ...]] = field(default_factory=list)
    fail: Exception | None = None

    def attach(self, db: Database, mail_id: int, patient_id: int, actor: str, reason: str) -> None:
        self.calls.append(("attach", mail_id, patient_id, actor, reason))
        if self.fail:
            raise self.fail
        with db.session() as s:
            m = s.get_one(Mail, mail_id)
            m.status, m.patient_id = "integrated", patient_id

    def reject(self, db: Database, mail_id: int, reason: str, actor: str) -> None:
        self.calls.append(("reject", mail_id, reason, actor))
        with db.session() as s:
            s.get_one(Mail, mail_id).status = "rejected"


@pytest.fixture
def inbound(world: World) -> FakeInbound:
    fake = FakeInbound(world.db)
    world.app.dependency_overrides[triage_flow] = lambda: fake
    return fake


def audit_actions(db: Database) -> list[str]:
    with db.session() as s:
        return [a.action for a in s.query(AuditEvent).order_by(AuditEvent.id)]


# ---- API: documents and results -------------------------------------------------------------------------------


async def test_patient_documents_of_both_origins(world: World, client: httpx.AsyncClient) -> None:
    r = await client.get(f"/api/v1/patients/{world.patient}/documents")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["patient_id"] == world.patient and body["total"] == 2
    received, produced = body["items"]  # newest first
    assert received["id"] == world.received and received["direction"] == "received"
    assert received["origin"] == {"code": "mssante", "label": "Reçu — MSSanté"}
    assert received["status"] == {"code": "integrated", "label": "Intégré"}
    assert received["sender"] == SENDER
    assert received["links"] == {
        "page": f"/documents/{world.received}",
        "api": f"/api/v1/documents/{world.received}",
        "content": f"/api/v1/documents/{world.received}/content",
        "mail": f"/mssante/triage/{world.mail_done}",
    }
    assert produced["direction"] == "produced" and produced["origin"]["label"] == "Produit — DPI (HL7)"
    assert produced["type"] == {"code": "11490-0", "title": "Lettre de liaison à la sortie"}
    assert (
        produced["sender"] is None
        and produced["links"]["content"] is None
        and produced["links"]["mail"] is None
    )
    assert "list_documents" in audit_actions(world.db)
    missing = await client.get("/api/v1/patients/999999/documents")
    assert missing.status_code == 404 and missing.json()["detail"] == "Patient inconnu"


async def test_patient_results_newest_first_with_flags_and_filter(
    world: World, client: httpx.AsyncClient
) -> None:
    body = (await client.get(f"/api/v1/patients/{world.patient}/results")).json()
    assert body["total"] == 5
    dated = [i for i in body["items"] if i["observed_at"]]
    assert [i["observed_at"] for i in dated] == sorted((i["observed_at"] for i in dated), reverse=True)
    crp = body["items"][-1]  # undated last
    assert crp["loinc"] is None and crp["abnormal"] is True and crp["interpretation"] is None
    assert crp["reference_text"] == "≤ 5"
    tsh = (await client.get(f"/api/v1/patients/{world.patient}/results", params={"loinc": "3016-3"})).json()
    assert [i["value"] for i in tsh["items"]] == ["3.100", "4.9", "1.950"]
    assert [i["abnormal"] for i in tsh["items"]] == [False, True, False]
    assert tsh["items"][1]["interpretation"] == {"code": "H", "label": "Élevé"}
    assert tsh["items"][0]["unit"] == "m[IU]/L" and tsh["items"][0]["reference_low"] == 0.27
    assert "read_lab_results" in audit_actions(world.db)
    assert (await client.get("/api/v1/patients/999999/results")).status_code == 404


# ---- API: triage -----------------------------------------------------------------------------------------------


async def test_triage_list_oldest_first_with_mailboxes_and_suggestions(
    world: World, client: httpx.AsyncClient
) -> None:
    body = (await client.get("/api/v1/mssante/triage")).json()
    assert body["total"] == 3
    assert body["mailboxes"] == [{"mailbox": BOX_A, "count": 2}, {"mailbox": BOX_B, "count": 1}]
    assert [i["id"] for i in body["items"]] == [world.mail_broken, world.mail_cda, world.mail_subject]
    by_id = {i["id"]: i for i in body["items"]}
    cda = by_id[world.mail_cda]
    assert (
        cda["status"] == {"code": "triage", "label": "À trier"}
        and cda["reason"] == "INS inconnu de l'établissement"
    )
    assert cda["sender"] == SENDER and cda["mailbox"] == BOX_A
    top = cda["suggestions"][0]
    assert top["patient_id"] == world.patient and top["name"] == "PAT-TROIS DOMINIQUE"
    assert top["reasons"][0] == "INS du document identique" and top["birth_date"] == "1979-03-28"
    namesake = next(sg for sg in cda["suggestions"] if sg["patient_id"] == world.namesake)
    assert "date de naissance différente" in namesake["reasons"] and namesake["score"] < top["score"]
    assert world.twin not in [sg["patient_id"] for sg in cda["suggestions"]]  # birth date alone: no
    subject = by_id[world.mail_subject]["suggestions"]
    assert subject[0]["patient_id"] == world.patient
    assert "nom présent dans l'objet du courriel" in subject[0]["reasons"]
    assert by_id[world.mail_broken]["suggestions"] == []
    only_b = (await client.get("/api/v1/mssante/triage", params={"mailbox": BOX_B})).json()
    assert [i["id"] for i in only_b["items"]] == [world.mail_broken] and only_b["total"] == 1


async def test_attach_and_reject_are_checked_then_delegated_to_the_flow(
    world: World, client: httpx.AsyncClient, inbound: FakeInbound
) -> None:
    url = f"/api/v1/mssante/triage/{world.mail_cda}"
    no_reason = await client.post(f"{url}/attach", json={"patient_id": world.patient, "reason": "  "})
    assert no_reason.status_code == 422 and no_reason.json()["detail"].startswith("Motif obligatoire")
    no_patient = await client.post(f"{url}/attach", json={"reason": "vérifié"})
    assert no_patient.status_code == 422 and "Patient" in no_patient.json()["detail"]
    unknown_patient = await client.post(f"{url}/attach", json={"patient_id": 999999, "reason": "vérifié"})
    assert unknown_patient.status_code == 404 and unknown_patient.json()["detail"] == "Patient inconnu"
    unknown_mail = await client.post("/api/v1/mssante/triage/999999/reject", json={"reason": "inconnu"})
    assert unknown_mail.status_code == 404 and unknown_mail.json()["detail"] == "Courriel inconnu"
    assert inbound.calls == []

    ok = await client.post(
        f"{url}/attach", json={"patient_id": world.patient, "reason": "INS vérifiée au DPI"}
    )
    assert ok.status_code == 200, ok.text
    assert ok.json() == {
        "mail_id": world.mail_cda,
        "status": {"code": "integrated", "label": "Intégré"},
        "patient_id": world.patient,
    }
    assert inbound.calls == [("attach", world.mail_cda, world.patient, "testeur", "INS vérifiée au DPI")]
    again = await client.post(f"{url}/reject", json={"reason": "doublon"})
    assert (
        again.status_code == 409
        and again.json()["detail"] == "Ce courriel n'est plus à trier (statut : Intégré)"
    )

    rejected = await client.post(
        f"/api/v1/mssante/triage/{world.mail_subject}/reject",
        json={"reason": "Patient inconnu de l'établissement"},
    )
    assert rejected.json()["status"]["code"] == "rejected"
    assert inbound.calls[-1] == (
        "reject",
        world.mail_subject,
        "Patient inconnu de l'établissement",
        "testeur",
    )


async def test_flow_refusal_gives_a_clear_answer(
    world: World, client: httpx.AsyncClient, inbound: FakeInbound
) -> None:
    refusal = ValueError("refus")
    refusal.message_fr = "Le document concerne un autre patient"  # type: ignore[attr-defined]
    inbound.fail = refusal
    url = f"/api/v1/mssante/triage/{world.mail_cda}/attach"
    r = await client.post(url, json={"patient_id": world.twin, "reason": "essai"})
    assert r.status_code == 409 and r.json()["detail"] == "Le document concerne un autre patient"


async def test_openapi_lists_the_routes_with_their_models(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()
    paths = schema["paths"]
    for path in (
        "/api/v1/patients/{patient_id}/documents",
        "/api/v1/patients/{patient_id}/results",
        "/api/v1/mssante/triage",
    ):
        assert "get" in paths[path]
    for action in ("attach", "reject"):
        assert "post" in paths[f"/api/v1/mssante/triage/{{mail_id}}/{action}"]
    models = schema["components"]["schemas"]
    assert {"PatientDocuments", "LabResults", "TriageList", "TriageOutcome", "AttachRequest"} <= set(models)
    assert "/mssante/triage" not in paths  # pages stay out of the API schema


# ---- pages ----------------------------------------------------------------------------------------------------


async def test_triage_page_in_french_with_mailbox_tabs(world: World, client: httpx.AsyncClient) -> None:
    r = await client.get("/mssante/triage")
    assert r.status_code == 200 and 'lang="fr"' in r.text
    html = r.text
    assert "Courriels MSSanté à trier" in html and "Motif de mise en tri" in html
    assert "Toutes (3)" in html and f"{BOX_A} (2)" in html and f"{BOX_B} (1)" in html
    assert "INS inconnu de l&#39;établissement" in html and "30 h" in html and "3 j" in html
    assert "moins d&#39;une heure" in html
    only_b = (await client.get("/mssante/triage", params={"bal": BOX_B})).text
    assert f'href="/mssante/triage/{world.mail_broken}"' in only_b
    assert f'href="/mssante/triage/{world.mail_cda}"' not in only_b


async def test_mail_page_shows_headers_attachments_and_suggestions(
    world: World, client: httpx.AsyncClient
) -> None:
    html = (await client.get(f"/mssante/triage/{world.mail_cda}")).text
    assert "En-têtes" in html and "X-MSS-INS" in html and SENDER in html
    assert "IHE_XDM.ZIP" in html and "application/zip" in html
    assert "Bonjour, veuillez trouver le compte rendu." in html
    assert "INS du document identique" in html
    assert html.count("Rattacher à ce patient") == 3  # two suggestions, and the form for any other patient
    assert html.count('name="motif" required') == 4 and "Rejeter" in html
    assert f'action="/mssante/triage/{world.mail_cda}/rejeter"' in html
    assert "read_mail" in audit_actions(world.db)
    broken = (await client.get(f"/mssante/triage/{world.mail_broken}")).text
    assert "Courriel illisible" in broken and "Aucun patient local ne correspond" in broken
    done = (await client.get(f"/mssante/triage/{world.mail_done}")).text
    assert "Rattacher à ce patient" not in done and f'href="/identites/{world.patient}"' in done
    assert "Métadonnées de l'expéditeur incomplètes ou erronées" in done
    assert "Lot de soumission incomplet : &lt;b&gt;un seul contentTypeCode&lt;/b&gt;" in done
    listed = (await client.get("/documents")).text
    assert "· MSSanté" in listed and "· HL7 (DPI)" in listed  # each document says how it came
    assert (await client.get("/mssante/triage/999999")).status_code == 404


async def test_page_forms_need_a_motif_and_come_back_with_a_message(
    world: World, client: httpx.AsyncClient, inbound: FakeInbound
) -> None:
    url = f"/mssante/triage/{world.mail_cda}"
    r = await client.post(f"{url}/rattacher", data={"patient_id": str(world.patient), "motif": ""})
    assert r.status_code == 303 and r.headers["location"] == url
    assert "Motif obligatoire" in (await client.get(url)).text
    r = await client.post(f"{url}/rattacher", data={"patient_id": "999999", "motif": "vérifié"})
    assert r.status_code == 303 and "Patient inconnu" in (await client.get(r.headers["location"])).text
    assert inbound.calls == []
    r = await client.post(
        f"{url}/rattacher", data={"patient_id": str(world.patient), "motif": "INS vérifiée"}
    )
    assert r.status_code == 303 and r.headers["location"] == "/mssante/triage"
    assert "Courriel rattaché" in (await client.get("/mssante/triage")).text
    r = await client.post(f"/mssante/triage/{world.mail_subject}/rejeter", data={"motif": "inconnu ici"})
    assert r.status_code == 303
    assert [c[0] for c in inbound.calls] == ["attach", "reject"]
    followed = await client.get(r.headers["location"])
    assert "Courriel rejeté : l&#39;expéditeur est informé du motif" in followed.text


async def test_patient_page_shows_documents_results_and_charts(
    world: World, client: httpx.AsyncClient
) -> None:
    html = (await client.get(f"/identites/{world.patient}")).text
    assert '<h2 id="documents">Documents</h2>' in html and "Résultats de biologie" in html
    assert "Reçu — MSSanté" in html and "Produit — DPI (HL7)" in html
    svgs = re.findall(r"<svg[^>]*aria-label=\"Évolution de ([^\"]*)\".*?</svg>", html, re.S)
    assert len(svgs) == 1 and svgs[0].startswith("Thyréostimuline")  # the only analyte with several values


def test_results_partial_one_point_per_value_and_highlighting(world: World) -> None:
    with world.db.session() as s:
        ctx = patient_sections(s, world.patient)
    html = TEMPLATES.env.get_template("_results.html").render(ctx)
    (chart,) = re.findall(r"<svg.*?</svg>", html, re.S)
    assert chart.count("<circle") == 3 and chart.count('fill="#b91c1c"') == 1  # the H value in red
    assert 'class="reference"' in chart and "<polyline" in chart
    assert "0,270 – 4,200" in html and "≤ 5" in html  # decimal comma for the reader
    assert html.count('class="diff"') == 3  # H, L and the unflagged CRP above its range
    assert "Hors valeurs de référence" in html and "Élevé" in html and "Bas" in html
    assert "Valeur" in html and "Unité" in html and "Interprétation" in html


# ---- pure functions -----------------------------------------------------------------------------------------------


def _candidate(
    pid: int, name: str, first: str, born: date, status: str = "PROV", ins: str | None = None
) -> Candidate:
    return Candidate(pid, name, None, first, born, "F", status, ins)


def test_ranking_puts_the_cda_ins_first_and_ignores_a_birth_date_alone() -> None:
    born = date(1979, 3, 28)
    cda = IdentityHint(
        "cda",
        ins_matricule=INS,
        family_names=("PAT-TROIS",),
        given_names=("Dominique",),
        birth_date=born,
        sex="F",
    )
    ranked = rank_candidates(
        [cda],
        [
            _candidate(1, "DURAND", "CLAIRE", born),
            _candidate(2, "Pat Trois", "Dominique Anne", date(1980, 1, 1)),
            _candidate(3, "PAT-TROIS", "DOMINIQUE", born, "QUAL", INS),
            _candidate(4, "PAT-TROIS", "DOMINIQUE", born, "PROV", INS),
        ],
    )
    assert [r.patient_id for r in ranked] == [3, 4, 2]
    assert ranked[0].reasons[:2] == ["INS du document identique", "date de naissance identique"]
    assert "identité locale : identité provisoire" in ranked[1].reasons[0]
    assert ranked[0].score > ranked[1].score > ranked[2].score


def test_a_claimed_ins_alone_is_a_weak_suggestion_and_a_contradicting_date_drops_it() -> None:
    qualified = _candidate(3, "PAT-TROIS", "DOMINIQUE", date(1979, 3, 28), "QUAL", INS)
    (claimed,) = rank_candidates([IdentityHint("objet", ins_claimed=INS)], [qualified])
    assert claimed.reasons == ["INS annoncé par l'expéditeur (X-MSS-INS, non vérifié)"]
    (from_cda,) = rank_candidates([IdentityHint("cda", ins_matricule=INS)], [qualified])
    assert from_cda.score > claimed.score
    other_date = IdentityHint("objet", ins_claimed=INS, birth_date=date(1990, 1, 1))
    assert rank_candidates([other_date], [qualified]) == []


def test_hints_read_each_part_on_its_own() -> None:
    garbage = mail_hints(b"\x00 rien", "XDM/1.0/DDM+Lettre MARTIN Paul 31/02/1980")
    assert len(garbage) == 1 and garbage[0].birth_date is None and "MARTIN" in garbage[0].words
    assert mail_hints(None, "") == []


def test_chart_geometry_dates_band_and_flat_series() -> None:
    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    chart = trend_chart(
        "TSH",
        "m[IU]/L",
        [(t0 + timedelta(days=10), 2.0, False), (t0, 1.0, False), (t0 + timedelta(days=20), 5.0, True)],
        (0.27, 4.2),
    )
    xs = [p.x for p in chart.points]
    assert xs == sorted(xs) and xs[0] == chart.plot[0] and xs[-1] == chart.plot[2]
    assert [p.value for p in chart.points] == ["1", "2", "5"] and chart.points[-1].abnormal
    assert chart.band is not None and chart.plot[1] <= chart.band[0] and chart.band[1] > 0
    assert chart.x_ticks[0][1] == "01/01/2025" and chart.x_ticks[-1][1] == "21/01/2025"
    flat = trend_chart("Na", "mmol/L", [(None, 140.0, False), (None, 140.0, False)])
    assert [p.x for p in flat.points] == [flat.plot[0], flat.plot[2]] and flat.points[0].y == flat.points[1].y


# ---- with the real inbound flow ---------------------------------------------------------------------------------


async def test_attach_through_the_real_flow_files_the_document_on_the_patient(
    world: World, client: httpx.AsyncClient
) -> None:
    url = f"/api/v1/mssante/triage/{world.mail_cda}/attach"
    r = await client.post(url, json={"patient_id": world.patient, "reason": "INS vérifiée au DPI"})
    assert r.status_code == 200, r.text
    assert r.json()["status"]["code"] == "integrated" and r.json()["patient_id"] == world.patient
    docs = (await client.get(f"/api/v1/patients/{world.patient}/documents")).json()["items"]
    filed = [d for d in docs if d["links"]["mail"] == f"/mssante/triage/{world.mail_cda}"]
    assert [(d["direction"], d["type"]["code"], d["sender"]) for d in filed] == [
        ("received", "18748-4", SENDER)
    ]
    triage = (await client.get("/api/v1/mssante/triage")).json()
    assert world.mail_cda not in [i["id"] for i in triage["items"]]
    # The flow's own refusals reach the user as they are, in French: nothing to file in a mail without a CDA.
    wrong = await client.post(
        f"/api/v1/mssante/triage/{world.mail_subject}/attach",
        json={"patient_id": world.patient, "reason": "essai"},
    )
    assert (
        wrong.status_code == 409
        and wrong.json()["detail"] == "Aucun document CDA à intégrer dans ce courriel"
    )


def test_every_document_source_has_a_label_in_the_pages_and_in_the_api() -> None:
    assert set(ORIGIN_LABELS) == set(SOURCE_LABELS) == {"hl7", "rest", "mhd", "mssante"}
