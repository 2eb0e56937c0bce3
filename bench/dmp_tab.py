"""`python -m bench --only dmp_tab`: a doctor opens the DMP tab of a patient whose DMP holds 200 documents, beside
the bare SOAP calls that the tab cannot do without, both against the same sandbox DMP in the same run.

Measured, with a strong session of the demo doctor whose scope is one unit (the care relationship is checked):
- the list searched in full, ``GET /identites/{id}/dmp?actualiser=1``: access decision, Annuaire Santé lookup of
  the doctor's specialty (the VIHF requires it), TD0.2, ITI-18 FindDocuments (the first search's two years, which
  keep all 200 documents), the list kept, audit trail, and the rendered page;
- a later opening, ``GET /identites/{id}/dmp``: the same, but the kept list brought up to date by what changed
  since (ITI-18 FindSubmissionSets, here nothing: the documents were submitted before the warm-up's call by more
  than the clock margin);
- the first document of that list, ``GET /identites/{id}/dmp/document?uid=...``: the same checks, ITI-18
  GetDocuments, ITI-43, the size and SHA-1 checks, and the CDA rendered.

The references are the SOAP requests of the same transactions, as the platform's DMP client builds them for the
same professional and patient (same consulter, same VIHF mode, signed once), POSTed as bytes with httpx to the
same sandbox, and their answers read no further than the MTOM parts, the query's status and the entries counted,
or the document's bytes: ITI-18 FindDocuments for the full list; FindSubmissionSets for the later opening;
ITI-18 GetDocuments + ITI-43 for the document. The
bare TD0.2 is timed too, for the note: the list makes that round trip and its reference does not.

The 200 documents are the sandbox's demo documents (ANS examples of five types), registered directly in the
sandbox's store as its demo seeding does, under distinct uniqueIds, spread over the last two years. The patient is
a demo patient of the doctor's unit with a qualified INS under a test OID and the consent to consultation; the
sandbox is told that this INS has an open DMP through its admin route, as a test or an editor's CI would.

The platform's data directory is on tmpfs when there is one (as for ``bench.auth``): every page writes audit
entries with synchronous=FULL. Pages are called in-process through httpx's ASGI transport; the DMP and the
Annuaire are reached over loopback HTTP in the sandbox's own process, as in production.
"""

from __future__ import annotations

import dataclasses
import re
import statistics
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import httpx
from lxml import etree
from pydantic import SecretStr
from sqlalchemy import select

from bench.auth import BASE_URL, DOCTOR
from opensegur.config import Settings
from opensegur.connectors.dmp_client import (
    DmpClient,
    DmpCredentials,
    DmpEndpoints,
    DmpIdentity,
    vihf_specialty,
)
from opensegur.flows.dmp_consult import Consulter, consent_refusal, consulter_for, patient_cx, with_specialty
from opensegur.flows.dmp_search import open_dmp, open_document
from opensegur.sandbox.annuaire import SANDBOX_API_KEY
from opensegur.sandbox.dmp import REPOSITORY_UNIQUE_ID
from opensegur.sandbox.dmp.patients import DmpPatient
from opensegur.sandbox.dmp.seed import DemoDocuments
from opensegur.sandbox.dmp.store import Caller, DmpStore
from opensegur.security import accounts, sessions
from opensegur.security.access import patient_scope_filter
from opensegur.security.matrix import Action
from opensegur.server import Platform, Runtime
from opensegur.store.models import Account, Patient
from opensegur.web.deps import SESSION_COOKIE

DOCUMENTS = 200
BENCH_OID = "1.2.250.1.999.79"  # the bench's arc for the uniqueIds of the documents it registers
# Within the first search's two years (FIRST_SEARCH_YEARS), with a margin for the run's own duration.
SPREAD_DAYS = 2 * 365 - 15
_SEEDER = Caller("BENCH-SEED", "Banc de mesure, onglet DMP", "BENCH", "INDIRECTE", "normal", "")
_XDS_RIM = "urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0"


@dataclasses.dataclass
class DmpTabFigures:
    """Mean milliseconds per opening over one round, the platform's pages and the bare calls."""

    list_ms: float  # GET /identites/{id}/dmp?actualiser=1
    find_ms: float  # bare ITI-18 FindDocuments
    later_ms: float  # GET /identites/{id}/dmp, the kept list brought up to date
    find_sets_ms: float  # bare ITI-18 FindSubmissionSets
    document_ms: float  # GET /identites/{id}/dmp/document?uid=<the list's first>
    get_retrieve_ms: float  # bare ITI-18 GetDocuments, then ITI-43
    td02_ms: float  # bare TD0.2


@dataclasses.dataclass(frozen=True)
class _Captured:
    """One SOAP request as the DMP client sent it, to be sent again as is."""

    url: str
    headers: dict[str, str]
    body: bytes


class _Recorder(httpx.AsyncBaseTransport):
    """Loopback HTTP that keeps a copy of each request the DMP client makes."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.requests: list[_Captured] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        headers = {k: request.headers[k] for k in ("content-type", "accept")}
        self.requests.append(_Captured(str(request.url), headers, body))
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def _sandbox_store_dir(sandbox_data_dir: Path) -> Path:
    """Where ``opensegur sandbox --data-dir`` keeps the DMP's store (``Platform.start_sandbox``)."""
    return sandbox_data_dir / "sandbox"


def seed_documents(store: DmpStore, patient: DmpPatient, now: datetime) -> list[str]:
    """``DOCUMENTS`` documents in the patient's DMP, one submission set each as producers send them, newest first;
    their uniqueIds, in that order (the list's)."""
    documents = DemoDocuments()
    return [
        documents.register(
            store,
            patient,
            i,
            now - timedelta(days=1 + i * SPREAD_DAYS / DOCUMENTS),
            unique_id=f"{BENCH_OID}.1.{i + 1}",
            set_unique_id=f"{BENCH_OID}.2.{i + 1}",
            source_id=BENCH_OID,
            caller=_SEEDER,
        )
        for i in range(DOCUMENTS)
    ]


@dataclasses.dataclass(frozen=True)
class _Subject:
    cookie: str
    patient_id: int
    patient_name: str
    matricule: str
    oid: str
    consulter: Consulter  # without the specialty, which the Annuaire gives


def _subject(rt: Runtime) -> _Subject:
    """A strong session of the demo doctor and a patient of the doctor's unit whose DMP may be consulted."""
    assert rt.hospital is not None
    with rt.db.session() as s:
        account = s.scalars(select(Account).where(Account.login == DOCTOR)).one()
        cookie, row = sessions.open_session(s, account, "totp", True, "127.0.0.1", "bench")
        doctor = accounts.actor_for_account(account, row, address="127.0.0.1")
        scopes = rt.hospital.matrix.scopes(doctor.assignments, Action.DMP_CONSULT)
        in_care = s.scalars(select(Patient).where(patient_scope_filter(scopes)).order_by(Patient.id))
        p = next((p for p in in_care if consent_refusal(p) is None), None)
        if p is None or not p.ins_matricule or not p.ins_oid:
            raise SystemExit(f"no demo patient of {DOCTOR}'s unit with a qualified INS and the DMP consent")
        # What the DMP route makes of this doctor and this patient (routes/dmp.py, _local_target).
        consulter = consulter_for(doctor.roles, doctor.rpps, doctor.display_name, p, "normal")
        return _Subject(
            cookie, p.id, f"{p.birth_name} {p.first_names}", p.ins_matricule, p.ins_oid, consulter
        )


def _parts(content_type: str, raw: bytes) -> list[bytes]:
    """The bodies of a multipart/related answer (MTOM), split on its boundary and nothing more."""
    found = re.search(r'boundary="?([^";]+)"?', content_type)
    assert found is not None, content_type
    chunks = raw.split(b"--" + found[1].encode())[1:-1]
    return [chunk.split(b"\r\n\r\n", 1)[1].removesuffix(b"\r\n") for chunk in chunks]


async def _post(http: httpx.AsyncClient, req: _Captured) -> list[bytes]:
    r = await http.post(req.url, content=req.body, headers=req.headers)
    r.raise_for_status()
    return _parts(r.headers["content-type"], r.content)


def _entries(envelope: bytes) -> int:
    """The registry's entries in a successful AdhocQueryResponse."""
    root = etree.fromstring(envelope)
    response = next(root.iter("{*}AdhocQueryResponse"))
    assert response.get("status", "").endswith(":Success"), envelope[:500]
    return sum(1 for _ in response.iter(f"{{{_XDS_RIM}}}ExtrinsicObject"))


async def _mean_ms(call: Callable[[], Awaitable[None]], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        await call()
    return (time.perf_counter() - start) * 1000 / n


async def bench_dmp_tab(
    endpoints: dict[str, Any], sandbox_data_dir: Path, data_dir: Path, n: int, rounds: int
) -> list[DmpTabFigures]:
    """Against the sandbox started with ``sandbox_data_dir`` and publishing ``endpoints``, a platform on
    ``data_dir``: ``rounds`` rounds of ``n`` openings of the list, of the first document, and of their bare calls,
    one after the other within a round, so that the machine's load varies little between what is compared."""
    dmp = endpoints["dmp"]
    pki = dmp["test_pki"]
    settings = Settings(
        data_dir=data_dir,
        demo=True,
        sandbox=False,
        http_port=0,
        mllp_port=0,
        workers=0,
        insi_url=endpoints["insi"]["url"],
        annuaire_url=endpoints["annuaire"]["url"],
        annuaire_api_key=SecretStr(SANDBOX_API_KEY),
        dmp_iti41_url=dmp["iti41"],
        dmp_iti18_url=dmp["iti18"],
        dmp_iti43_url=dmp["iti43"],
        dmp_iti57_url=dmp["iti57"],
        dmp_td02_url=dmp["td02"],
        dmp_signing_cert=pki["client_cert"],
        dmp_signing_key=pki["client_key"],
    )
    platform = Platform(settings)
    rt = await platform.start()
    recorder = _Recorder()
    # The platform's DMP client, as Platform.start wires it, recording what it sends for the references.
    client = DmpClient(
        DmpEndpoints(dmp["iti41"], dmp["iti18"], dmp["iti57"], dmp["iti43"], dmp["td02"]),
        DmpCredentials(Path(pki["client_cert"]), Path(pki["client_key"])),
        DmpIdentity(
            oid_root=settings.oid_root,
            lps_name=settings.insi_lps_name,
            lps_version=settings.insi_lps_version,
            lps_homologation_id=settings.dmp_lps_homologation_id,
        ),
        transport=recorder,
    )
    pages = httpx.AsyncClient(transport=httpx.ASGITransport(app=rt.app), base_url=BASE_URL)
    http = httpx.AsyncClient()
    try:
        who = _subject(rt)
        pages.cookies.set(SESSION_COOKIE, who.cookie)
        declared = await http.put(
            dmp["admin"] + "/patients",
            json={"matricule": who.matricule, "oid": who.oid, "name": who.patient_name},
        )
        declared.raise_for_status()
        cx = patient_cx(who.matricule, who.oid)
        store = DmpStore(_sandbox_store_dir(sandbox_data_dir), REPOSITORY_UNIQUE_ID)
        try:
            uids = seed_documents(
                store, DmpPatient(who.matricule, who.oid, who.patient_name), datetime.now(UTC)
            )
        finally:
            store.close()
        first = uids[0]
        tab = f"/identites/{who.patient_id}/dmp"
        viewer = f"{tab}/document?uid={first}"

        async def page(path: str) -> str:
            r = await pages.get(path)
            if r.status_code != 200:
                raise SystemExit(f"{path}: {r.status_code} {r.text[:300]}")
            return r.text

        # Warm-up, and what each opening must show: every document listed, the first one rendered.
        listed = await page(tab)
        missing = [uid for uid in uids if f'{tab}/document?uid={uid}"' not in listed]
        if missing:
            raise SystemExit(
                f"{len(missing)} of the {DOCUMENTS} documents are not in the DMP tab: {missing[:3]}"
            )
        if "<html" not in (await page(viewer))[:500].lower():
            raise SystemExit(f"{viewer}: not a rendered page")

        consulter = await with_specialty(who.consulter, partial(vihf_specialty, rt.annuaire))
        view = await open_dmp(client, consulter, cx)
        document = await open_document(client, consulter, cx, first)
        assert view.to_keep is not None
        later = await open_dmp(client, consulter, cx, kept=view.to_keep)
        td02, find, get, retrieve, _td02, find_sets = recorder.requests
        assert len(view.documents) == DOCUMENTS and view.documents[0].unique_id == first
        assert later.refreshed is not None and len(later.documents) == DOCUMENTS
        size = len(document.content)

        async def bare_find() -> None:
            assert _entries((await _post(http, find))[0]) == DOCUMENTS

        async def bare_get_retrieve() -> None:
            assert _entries((await _post(http, get))[0]) == 1
            assert len((await _post(http, retrieve))[1]) == size

        async def bare_find_sets() -> None:
            envelope = etree.fromstring((await _post(http, find_sets))[0])
            assert next(envelope.iter("{*}AdhocQueryResponse")).get("status", "").endswith(":Success")

        async def bare_td02() -> None:
            etree.fromstring((await _post(http, td02))[0])

        async def open_list() -> None:
            await page(f"{tab}?actualiser=1")

        async def open_later() -> None:
            assert "aucun changement" in await page(tab)

        async def open_first() -> None:
            await page(viewer)

        for call in (bare_find, bare_find_sets, bare_get_retrieve, bare_td02):
            await call()
        figures = []
        for _ in range(rounds):
            figures.append(
                DmpTabFigures(
                    list_ms=await _mean_ms(open_list, n),
                    find_ms=await _mean_ms(bare_find, n),
                    later_ms=await _mean_ms(open_later, n),
                    find_sets_ms=await _mean_ms(bare_find_sets, n),
                    document_ms=await _mean_ms(open_first, n),
                    get_retrieve_ms=await _mean_ms(bare_get_retrieve, n),
                    td02_ms=await _mean_ms(bare_td02, n),
                )
            )
    finally:
        await http.aclose()
        await pages.aclose()
        await client.aclose()
        await platform.stop()
    return figures


def median_figures(rounds: list[DmpTabFigures]) -> DmpTabFigures:
    return DmpTabFigures(
        *(statistics.median(getattr(r, f.name) for r in rounds) for f in dataclasses.fields(DmpTabFigures))
    )
