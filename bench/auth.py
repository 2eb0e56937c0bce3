"""`python -m bench --only auth`: what authentication + authorisation add to a request, beside the same routes with
the access decision bypassed, both served in the same run by the same platform.

Measured routes: the patient page ``GET /identites/{id}`` with a session cookie (a doctor whose scope is one unit:
the care-relationship check runs), and ``GET /api/v1/patients/{id}`` with a bearer token (GHT-wide, as
``opensegur token create`` makes them).

The reference is the same application (``create_app`` on the same runtime, same middleware, same route functions,
same database) in which ``current_actor`` and every route guard (``allow(action)``) are replaced by a function
handing over a fixed actor: no cookie or token is looked up, no matrix consulted, no CSRF check. A bare FastAPI
app with the route functions would also drop the middleware and exception handlers, and overriding
``current_actor`` alone would keep the guard; neither measures the access decision alone. That fixed actor is the
measured user's own (same role, so the page renders the same sections and the audit trail records the same
entry) with a GHT-wide scope: the patient-scope check that the route body runs (``ensure_patient``) then takes
its cheapest form, a primary-key lookup, which the reference keeps and the figures therefore do not count.
Recording the read in the audit trail is the same work in both and is not counted either.

The platform's data directory is on tmpfs when the machine has one: every read writes its audit entry with
synchronous=FULL, and a disk's fsync time, which varies by milliseconds from one request to the next, would drown
the fraction of a millisecond measured. The access decision itself writes at most once a minute (the session's
idle deadline, the token's last use), so this takes nothing away from what is measured.

Both apps are called in-process through httpx's ASGI transport: the HTTP server's work is the same for both
and would only add its own variance to the difference. They are called in short alternating rounds: what the
machine's load or SQLite's growing WAL does to one build in a round it does to the other, and the median of the
per-round differences is what the decision adds.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from sqlalchemy import select

from opensegur.config import Settings
from opensegur.security import accounts, sessions, tokens
from opensegur.security.access import patient_scope_filter
from opensegur.security.actor import Actor
from opensegur.security.matrix import Action, Assignment, Scope
from opensegur.server import Platform, Runtime
from opensegur.store.models import Account, Patient
from opensegur.web.app import create_app
from opensegur.web.deps import SESSION_COOKIE, current_actor, policy_of

BASE_URL = "http://127.0.0.1"  # what the ASGI transport puts in the requests; nothing listens there
DOCTOR = "dr.reault"  # a demo médecin whose scope is one unit: reads go through the care relationship


@dataclasses.dataclass
class RouteFigures:
    """Mean microseconds per request of one route, with the access decision and without (median of the rounds),
    and what the decision adds (median of the differences between the two builds within each round): elapsed
    time, and CPU time of the process (all its threads), which other processes' load on the machine disturbs
    far less."""

    us: float
    base_us: float
    added_us: float
    added_cpu_us: float


def auth_data_parent() -> str | None:
    """Where the measured platform keeps its data: tmpfs if there is one (see the module's notes)."""
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None


def _guards(dependant: Dependant) -> list[Callable[..., Any]]:
    found = []
    for dep in dependant.dependencies:
        policy = policy_of(dep.call) if dep.call is not None else None
        if dep.call is not None and policy is not None and policy.action is not None:
            found.append(dep.call)
        found.extend(_guards(dep))
    return found


def without_access_decision(app: FastAPI, actor: Actor) -> FastAPI:
    """``app`` with the actor resolution and every route guard replaced by ``actor`` (the reference build)."""

    async def fixed(request: Request) -> Actor:
        request.state.actor = actor  # what the real resolution leaves for templates and error handlers
        return actor

    app.dependency_overrides[current_actor] = fixed
    for route in app.routes:
        if isinstance(route, APIRoute):
            for guard in _guards(route.dependant):
                app.dependency_overrides[guard] = fixed
    return app


def _credentials(rt: Runtime) -> tuple[str, str, int, Actor, Actor]:
    """A strong session of the demo doctor, a GHT-wide token of the same role, a patient the doctor may read,
    and the reference actors (the same users, GHT-wide)."""
    assert rt.hospital is not None
    with rt.db.session() as s:
        account = s.scalars(select(Account).where(Account.login == DOCTOR)).one()
        cookie, row = sessions.open_session(s, account, "totp", True, "127.0.0.1", "bench")
        doctor = accounts.actor_for_account(account, row, address="127.0.0.1")
        scopes = rt.hospital.matrix.scopes(doctor.assignments, Action.IDENTITY_READ)
        patient_id = s.scalars(
            select(Patient.id).where(patient_scope_filter(scopes)).order_by(Patient.id)
        ).first()
        if patient_id is None:
            raise SystemExit(f"no demo patient in the care of {DOCTOR}: the demo stays did not load")
        role = doctor.assignments[0].role
        secret = tokens.create_token(s, "bench", role, created_by="bench")
        token = tokens.resolve_token(s, secret)
        assert token is not None
        system = tokens.actor_for_token(token, "127.0.0.1")
    ght = (Assignment(role, Scope("ght")),)
    return (
        cookie,
        secret,
        patient_id,
        dataclasses.replace(doctor, assignments=ght),
        dataclasses.replace(system, assignments=ght),
    )


async def _mean_us(client: httpx.AsyncClient, url: str, n: int) -> tuple[float, float]:
    """Elapsed and CPU microseconds per request, over ``n`` requests one after the other."""
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(n):
        r = await client.get(url)
        if r.status_code != 200:
            raise SystemExit(f"{url}: {r.status_code} {r.text[:200]}")
    return (time.perf_counter() - start) * 1e6 / n, (time.process_time() - cpu) * 1e6 / n


def _figures(ours: list[tuple[float, float]], base: list[tuple[float, float]]) -> RouteFigures:
    pairs = list(zip(ours, base, strict=True))
    return RouteFigures(
        statistics.median(o[0] for o in ours),
        statistics.median(b[0] for b in base),
        statistics.median(o[0] - b[0] for o, b in pairs),
        statistics.median(o[1] - b[1] for o, b in pairs),
    )


async def bench_auth(n: int, tmp: Path, *, batch: int = 10) -> tuple[RouteFigures, RouteFigures]:
    """The page with a session, then the API route with a token: ``n`` requests to each build of each route, in
    rounds of ``batch`` requests per build, alternating, so that the machine's load varies little within a round."""
    settings = Settings(data_dir=tmp, demo=True, sandbox=False, http_port=0, mllp_port=0, workers=0)
    platform = Platform(settings)
    rt = await platform.start()
    try:
        cookie, secret, patient_id, person, system = await asyncio.to_thread(_credentials, rt)
        page, api = f"/identites/{patient_id}", f"/api/v1/patients/{patient_id}"

        def asgi_client(app: FastAPI, **options: Any) -> httpx.AsyncClient:
            return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE_URL, **options)

        clients = (
            asgi_client(rt.app, cookies={SESSION_COOKIE: cookie}),
            asgi_client(without_access_decision(create_app(rt), person)),
            asgi_client(rt.app, headers={"authorization": f"Bearer {secret}"}),
            asgi_client(without_access_decision(create_app(rt), system)),
        )
        paths = (page, page, api, api)
        times: list[list[tuple[float, float]]] = [[] for _ in clients]
        for i, client in enumerate(clients):  # warm-up: template and statement caches
            await _mean_us(client, paths[i], batch)
        for _ in range(max(1, n // batch)):
            for i, client in enumerate(clients):
                times[i].append(await _mean_us(client, paths[i], batch))
        for client in clients:
            await client.aclose()
    finally:
        await platform.stop()
    return _figures(times[0], times[1]), _figures(times[2], times[3])
