"""REST intake of a PDF: the platform builds the CDA R2 N1, validates it and delivers it like an HL7 document.

Two setups: an *offline* app (real database and demo GHT, no workers) where every answer is deterministic, and
the in-process Platform with the sandbox DMP for the end-to-end path.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from pypdf import PdfWriter
from sqlalchemy import func, select

from opensegur.config import Settings
from opensegur.content.validation import CdaValidator
from opensegur.flows.hl7_intake import Hl7Intake
from opensegur.flows.jobs import JobKind
from opensegur.ops.demo import load_demo, luhn_complete
from opensegur.security.psc_delegation import PscDelegation
from opensegur.server import Platform, Runtime
from opensegur.store.db import Database
from opensegur.store.models import AuditEvent, Job, Patient
from opensegur.web.app import create_app
from tests.actors import act_as

# ---- shared fixtures (also imported by test_documents_api) --------------------------------------------------


def make_pdf(pages: int = 1) -> bytes:
    writer = PdfWriter()
    for _ in range(pages):
        writer.add_blank_page(595, 842)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


# The first demo professional (see ops.demo): a valid RPPS whose Luhn key is right.
RPPS = luhn_complete("1000000001")
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + b"\x00" * 64


@dataclass
class Wakes:
    count: int = 0

    def wake(self) -> None:
        self.count += 1


@dataclass
class Offline:
    """What create_app needs from a runtime, without workers: documents stay where the test puts them."""

    settings: Settings
    db: Database
    intake: Hl7Intake
    workers: Wakes = field(default_factory=Wakes)
    insi: Any = None
    endpoints: dict[str, Any] = field(default_factory=dict)
    ready: bool = True
    mllp_port: int | None = None
    http_port: int | None = None
    psc_delegation: PscDelegation = field(default_factory=PscDelegation)


@pytest.fixture
def offline(tmp_path: Path) -> Iterator[Offline]:
    db = Database(f"sqlite:///{tmp_path / 'offline.db'}")
    db.migrate()
    load_demo(db)
    offline = Offline(Settings(data_dir=tmp_path), db, Hl7Intake(db))
    db.on_jobs_committed(offline.workers.wake)  # as a started WorkerPool does
    yield offline
    db.dispose()


@pytest.fixture
async def client(offline: Offline) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=act_as(create_app(offline)))
    async with httpx.AsyncClient(transport=transport, base_url="http://opensegur.test") as c:
        yield c


@pytest.fixture(scope="session")
def schematron_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.getbasetemp() / "schematron-cache"
    path.mkdir(exist_ok=True)
    return path


@contextlib.asynccontextmanager
async def running(tmp_path: Path, cache: Path, **overrides: Any) -> AsyncIterator[Runtime]:
    """The whole platform in process: sandbox DMP and INSi, demo GHT, workers, HTTP on a free port."""
    options: dict[str, Any] = {
        "data_dir": tmp_path,
        "demo": True,
        "http_port": 0,
        "mllp_port": 0,
        "cache_dir": cache,
        "job_backoff_base_s": 0.1,
        "job_backoff_max_s": 0.3,
        **overrides,
    }
    p = Platform(Settings(**options))
    rt = await p.start()
    act_as(rt.app)
    try:
        yield rt
    finally:
        with contextlib.suppress(httpx.HTTPError):
            async with httpx.AsyncClient() as c:
                await c.delete(f"{rt.endpoints['dmp']['admin']}/faults")
        await p.stop()


def qualified_patient(db: Database, site_index: int = 1) -> dict[str, Any]:
    """A demo identity the DMP accepts: qualified, with an INS and complete strict traits.

    The second site by default: the first one's IPP authority is the ANS examples' "000897406", not an OID,
    and the DMP refuses a sourcePatientId under it (the flow sends it as is today).
    """
    with db.session() as s:
        rows = s.scalars(
            select(Patient)
            .where(
                Patient.status == "QUAL", Patient.ins_matricule.is_not(None), Patient.birth_place.is_not(None)
            )
            .order_by(Patient.structure_id, Patient.id)
        ).all()
        sites = sorted({p.structure_id for p in rows})
        p = next(p for p in rows if p.structure_id == sites[site_index])
        return {
            "id": p.id,
            "site": p.structure_id,
            "ipp": p.identifiers[0].value,
            "ins": p.ins_matricule,
            "name": p.birth_name,
        }


def metadata(patient: dict[str, Any], **extra: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "patient": {"site": patient["site"], "ipp": patient["ipp"]},
        "author": {"rpps": RPPS, "family": "RÉAULT", "given": "Pierre", "specialty": "G15_10/SM26"},
        "type_code": "11490-0",
        "title": "Lettre de liaison à la sortie",
        "effective_time": "2026-01-15T10:30:00+01:00",
        "stay": {
            "visit_number": "SEJ-2026-0001",
            "authority_oid": "1.2.250.1.999.42.9.1",
            "start": "2026-01-10T08:00:00",
            "end": "2026-01-15T10:00:00",
            "patient_class": "I",
        },
        "visibility": {"masque_ps": False, "invisible_patient": False, "invisible_rep_legaux": False},
    }
    meta.update(extra)
    return meta


def files(meta: Any, pdf: bytes, name: str = "lettre.pdf", mime: str = "application/pdf") -> dict[str, Any]:
    raw = meta if isinstance(meta, str) else json.dumps(meta)
    return {"pdf": (name, pdf, mime), "metadata": (None, raw)}


async def wait_until(predicate: Callable[[], Awaitable[bool]], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.1)
    raise AssertionError("condition not met in time")


# ---- offline: what the intake stores, and what it refuses ---------------------------------------------------


async def test_intake_stores_the_document_and_its_job_in_one_go(
    offline: Offline, client: httpx.AsyncClient
) -> None:
    patient = qualified_patient(offline.db)
    r = await client.post("/api/v1/documents", files=files(metadata(patient), make_pdf()))
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["status"] == {"code": "received", "label": "Reçu"} and body["kind"] == "initial"
    assert body["url"] == f"/api/v1/documents/{body['id']}" and r.headers["location"] == body["url"]
    root, _, ext = body["uniqueId"].partition("^")
    assert root == f"{offline.settings.oid_root}.1.{patient['site']}" and len(ext) == 16
    assert offline.workers.count == 1  # the workers are told at once, not at their next poll
    with offline.db.session() as s:
        job = s.scalar(select(Job).where(Job.key == f"{JobKind.PROCESS}:{body['id']}"))
        assert job is not None and job.args == {"document_id": body["id"]} and job.patient_id == patient["id"]
        audit = s.scalars(select(AuditEvent).where(AuditEvent.action == "submit_document")).all()
        assert [a.patient_id for a in audit] == [patient["id"]]
    detail = (await client.get(body["url"])).json()
    assert detail["source"] == "rest" and detail["patient"]["id"] == patient["id"]
    assert detail["type"] == {"code": "11490-0", "title": "Lettre de liaison à la sortie"}
    assert detail["first_send"] == {"kind": "initial", "label": "Premier envoi", "first_send": True}
    assert detail["stay"] == {"patient_class": "I", "visit_number": "SEJ-2026-0001"}
    assert detail["version"] == 1 and detail["set_id"].startswith(f"{offline.settings.oid_root}.2.")


async def test_patient_found_by_ins_and_visibility_flags_kept(
    offline: Offline, client: httpx.AsyncClient
) -> None:
    patient = qualified_patient(offline.db, site_index=0)
    meta = metadata(
        patient,
        visibility={"masque_ps": True, "invisible_patient": False, "invisible_rep_legaux": True},
    )
    meta["patient"] = {"site": patient["site"], "ins": patient["ins"], "ins_oid": "1.2.250.1.213.1.4.10"}
    r = await client.post("/api/v1/documents", files=files(meta, make_pdf(2)))
    assert r.status_code == 202, r.text
    detail = (await client.get(r.json()["url"])).json()
    assert detail["patient"]["id"] == patient["id"]
    assert detail["flags"]["confidentiality"] == ["MASQUE_PS", "INVISIBLE_REPRESENTANTS_LEGAUX"]


@pytest.mark.parametrize(
    ("name", "content", "mime"),
    [
        ("photo.pdf", PNG, "application/pdf"),  # a PNG under a PDF name and type
        ("notes.pdf", b"Compte rendu en texte brut\n" * 20, "application/pdf"),
        ("tronque.pdf", make_pdf()[:-200], "application/pdf"),  # magic bytes right, file cut short
    ],
)
async def test_non_pdf_uploads_are_refused(
    offline: Offline, client: httpx.AsyncClient, name: str, content: bytes, mime: str
) -> None:
    r = await client.post(
        "/api/v1/documents", files=files(metadata(qualified_patient(offline.db)), content, name, mime)
    )
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "PDF_INVALID" and r.json()["field"] == "pdf"
    assert "PDF" in r.json()["message"]
    await _nothing_stored(offline)


async def _nothing_stored(offline: Offline) -> None:
    with offline.db.session() as s:
        assert s.scalar(select(func.count()).select_from(Job).where(Job.kind == JobKind.PROCESS)) == 0


async def test_over_limit_upload_is_refused_while_streaming(
    offline: Offline, client: httpx.AsyncClient
) -> None:
    meta = json.dumps(metadata(qualified_patient(offline.db)))
    big = b"%PDF-1.4\n" + b"0" * (21 * 1024 * 1024)
    # Declared length: refused before reading anything.
    r = await client.post("/api/v1/documents", files=files(meta, big))
    assert r.status_code == 413 and "20 Mo" in r.json()["message"]

    # Chunked upload without Content-Length: the count while streaming stops it.
    boundary = "limite-opensegur"

    async def body() -> AsyncIterator[bytes]:
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="metadata"\r\n\r\n{meta}\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="pdf"; filename="gros.pdf"\r\n'
            "Content-Type: application/pdf\r\n\r\n"
        ).encode()
        for _ in range(22):
            yield b"0" * (1024 * 1024)
        yield f"\r\n--{boundary}--\r\n".encode()

    r = await client.post(
        "/api/v1/documents",
        content=body(),
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
    )
    assert "content-length" not in r.request.headers
    assert r.status_code == 413, r.text
    await _nothing_stored(offline)


@pytest.mark.parametrize(
    ("mutate", "status", "code", "field"),
    [
        (lambda m: "{ceci n'est pas du JSON", 400, "METADATA_JSON", "metadata"),
        (
            lambda m: {**m, "patient": {"site": m["patient"]["site"], "ipp": "000000"}},
            422,
            "PATIENT_UNKNOWN",
            None,
        ),
        (lambda m: {**m, "type_code": "99999-9"}, 422, "TYPE_CODE_UNKNOWN", "type_code"),
        (
            lambda m: {**m, "patient": {"site": m["patient"]["site"], "ins": "279035121518988"}},
            422,
            "INS_KEY",
            None,
        ),
        (lambda m: {**m, "effective_time": "15/01/2026"}, 422, "METADATA_INVALID", "effective_time"),
        (lambda m: {**m, "patient": {"site": 999, "ipp": "1"}}, 422, "SITE_UNKNOWN", "patient.site"),
        (lambda m: {**m, "author": {"rpps": RPPS[:-1] + str((int(RPPS[-1]) + 1) % 10)}}, 422, "RPPS", None),
        (lambda m: {k: v for k, v in m.items() if k != "type_code"}, 422, "METADATA_MISSING", "type_code"),
    ],
)
async def test_bad_metadata_gets_a_clear_french_answer(
    offline: Offline,
    client: httpx.AsyncClient,
    mutate: Callable[[dict[str, Any]], Any],
    status: int,
    code: str,
    field: str | None,
) -> None:
    meta = mutate(metadata(qualified_patient(offline.db)))
    r = await client.post("/api/v1/documents", files=files(meta, make_pdf()))
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"] == code
    if field is not None:
        assert body["field"] == field
    assert body["message"] and not body["message"].startswith("Field")  # ours, in French, not pydantic's
    await _nothing_stored(offline)


async def test_identity_without_ins_is_refused(offline: Offline, client: httpx.AsyncClient) -> None:
    with offline.db.session() as s:
        prov = s.scalars(select(Patient).where(Patient.ins_matricule.is_(None)).order_by(Patient.id)).first()
        assert prov is not None
        ref = {"site": prov.structure_id, "ipp": prov.identifiers[0].value}
    meta = metadata({"site": ref["site"], "ipp": ref["ipp"]})
    r = await client.post("/api/v1/documents", files=files(meta, make_pdf()))
    assert r.status_code == 422 and r.json()["error"] == "PATIENT_WITHOUT_INS"
    assert "Qualifiez l'identité" in r.json()["message"]


async def test_not_multipart_and_missing_parts(offline: Offline, client: httpx.AsyncClient) -> None:
    r = await client.post("/api/v1/documents", json={"pdf": "x"})
    assert r.status_code == 415 and r.json()["error"] == "MULTIPART_EXPECTED"
    r = await client.post("/api/v1/documents", files={"metadata": (None, "{}")})
    assert r.status_code == 400 and r.json()["error"] == "PDF_MISSING"
    r = await client.post("/api/v1/documents", files={"pdf": ("a.pdf", make_pdf(), "application/pdf")})
    assert r.status_code == 400 and r.json()["error"] == "METADATA_MISSING"


async def test_unknown_type_in_j07_but_without_xds_class_is_refused_early(
    offline: Offline, client: httpx.AsyncClient
) -> None:
    # 11369-6 (historique des vaccinations): in J07, but no sourced XDS class for it yet.
    meta = metadata(qualified_patient(offline.db), type_code="11369-6")
    r = await client.post("/api/v1/documents", files=files(meta, make_pdf()))
    assert r.status_code == 422 and r.json()["error"] == "TYPE_CODE_UNSUPPORTED"


async def test_replacement_carries_the_set_and_refuses_a_second_replacement(
    offline: Offline, client: httpx.AsyncClient
) -> None:
    patient = qualified_patient(offline.db)
    first = (await client.post("/api/v1/documents", files=files(metadata(patient), make_pdf()))).json()
    r = await client.post(
        "/api/v1/documents", files=files(metadata(patient, replaces=first["uniqueId"]), make_pdf(2))
    )
    assert r.status_code == 202, r.text
    second = (await client.get(r.json()["url"])).json()
    original = (await client.get(first["url"])).json()
    assert second["kind"] == "replacement" and second["first_send"]["label"] == "Nouvelle version"
    assert second["set_id"] == original["set_id"] and second["version"] == 2
    assert second["replaces"] == first["uniqueId"]
    cda = (await client.get(f"{r.json()['url']}/content")).text
    assert f'extension="{first["uniqueId"].split("^")[1]}"' in cda and 'typeCode="RPLC"' in cda
    again = await client.post(
        "/api/v1/documents", files=files(metadata(patient, replaces=first["uniqueId"]), make_pdf())
    )
    assert again.status_code == 409 and again.json()["error"] == "REPLACED_ALREADY"
    other = qualified_patient(offline.db, site_index=0)
    unknown = await client.post(
        "/api/v1/documents", files=files(metadata(other, replaces="1.2.3.4^NOPE"), make_pdf())
    )
    assert unknown.status_code == 422 and unknown.json()["error"] == "REPLACED_UNKNOWN"


async def test_built_cda_has_no_finding_at_all(
    offline: Offline, client: httpx.AsyncClient, schematron_cache: Path
) -> None:
    patient = qualified_patient(offline.db)
    r = await client.post("/api/v1/documents", files=files(metadata(patient), make_pdf()))
    content = await client.get(f"{r.json()['url']}/content")
    assert content.status_code == 200 and content.headers["content-type"].startswith("application/xml")
    validator = CdaValidator(schematron_cache / "schematron")
    findings = await asyncio.to_thread(validator.validate, content.content, strict=True)
    assert findings == []
    replaced = await client.post(
        "/api/v1/documents",
        files=files(metadata(patient, replaces=r.json()["uniqueId"], stay={}, visibility=None), make_pdf()),
    )
    assert replaced.status_code == 202, replaced.text
    second = await client.get(f"{replaced.json()['url']}/content")
    assert await asyncio.to_thread(validator.validate, second.content, strict=True) == []


# ---- end to end: the sandbox DMP receives the document ------------------------------------------------------


async def _status(http: httpx.AsyncClient, url: str) -> str:
    return str((await http.get(url)).json()["status"]["code"])


async def _wait_status(
    http: httpx.AsyncClient, url: str, wanted: set[str], timeout: float = 90
) -> dict[str, Any]:
    async def reached() -> bool:
        return await _status(http, url) in wanted

    try:
        await wait_until(reached, timeout)
    except AssertionError as exc:
        raise AssertionError((await http.get(url)).json()) from exc
    detail: dict[str, Any] = (await http.get(url)).json()
    return detail


async def _dmp_entries(rt: Runtime, matricule: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient() as c:
        r = await c.get(rt.endpoints["dmp"]["inspect"], params={"patient": matricule})
        r.raise_for_status()
        return [e for e in r.json()["entries"] if e["typeCode"]["code"] != "E1762"]


async def test_rest_document_reaches_the_sandbox_dmp_then_is_replaced(
    tmp_path: Path, schematron_cache: Path
) -> None:
    async with (
        running(tmp_path, schematron_cache) as rt,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{rt.http_port}", timeout=60) as http,
    ):
        patient = qualified_patient(rt.db)
        r = await http.post("/api/v1/documents", files=files(metadata(patient), make_pdf()))
        assert r.status_code == 202, r.text
        first = r.json()
        detail = await _wait_status(http, first["url"], {"sent", "rejected", "error"})
        assert detail["status"]["code"] == "sent", detail
        assert detail["findings"] == []
        assert [d["status"] for d in detail["deliveries"]] == ["delivered"]
        assert detail["deliveries"][0]["entry_uuid"]
        assert any(e["transaction"] == "ITI-41" and e["http_status"] == 200 for e in detail["exchanges"])
        states = {s["step"]: s["state"] for s in detail["timeline"]}
        assert states == {
            "received": "done",
            "validated": "done",
            "waiting_identity": "done",
            "sent": "done",
            "acknowledged": "skipped",
        }
        entries = await _dmp_entries(rt, patient["ins"])
        mine = [e for e in entries if e["uniqueId"] == first["uniqueId"]]
        assert len(mine) == 1 and mine[0]["status"] == "Approved"
        assert mine[0]["typeCode"]["code"] == "11490-0"

        r = await http.post(
            "/api/v1/documents", files=files(metadata(patient, replaces=first["uniqueId"]), make_pdf(2))
        )
        assert r.status_code == 202, r.text
        second = r.json()
        assert (await _wait_status(http, second["url"], {"sent", "rejected", "error"}))["status"][
            "code"
        ] == "sent"
        by_id = {e["uniqueId"]: e["status"] for e in await _dmp_entries(rt, patient["ins"])}
        assert by_id[first["uniqueId"]] == "Deprecated" and by_id[second["uniqueId"]] == "Approved"


async def test_over_limit_upload_over_a_real_socket_gets_413(tmp_path: Path, schematron_cache: Path) -> None:
    async with (
        running(tmp_path, schematron_cache) as rt,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{rt.http_port}", timeout=60) as http,
    ):
        meta = metadata(qualified_patient(rt.db))
        r = await http.post("/api/v1/documents", files=files(meta, b"%PDF-1.7\n" + b"1" * (21 * 1024 * 1024)))
        assert r.status_code == 413 and r.json()["error"] == "TOO_LARGE"
        assert (await http.get("/healthz")).status_code == 200


@pytest.mark.parametrize(
    "type_code", ["11490-0", "34874-8", "18748-4", "11502-2", "57833-6", "11488-4", "15508-5", "87273-9"]
)
async def test_every_hospital_document_type_of_the_issue_is_accepted(
    offline: Offline, client: httpx.AsyncClient, type_code: str
) -> None:
    meta = metadata(qualified_patient(offline.db), type_code=type_code)
    r = await client.post("/api/v1/documents", files=files(meta, make_pdf()))
    assert r.status_code == 202, r.text
