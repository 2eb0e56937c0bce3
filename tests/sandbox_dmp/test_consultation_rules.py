"""The DMP sandbox plays consultation as strictly as feeding: blocked professionals and structures, the patient's
authorisation, oppositions to the emergency modes, and INDIRECTE kept to feeding (module docstring of the app)."""

from __future__ import annotations

import dataclasses
from typing import Any

import httpx
import pytest

from opensegur.content import jdv
from opensegur.sandbox.dmp.app import ERR_BLOCKED, ERR_FORBIDDEN, ERR_OPPOSITION, REPOSITORY_UNIQUE_ID
from opensegur.security.pki import TestPki
from opensegur.transactions import xds
from opensegur.transactions.td02 import ACTION_TD02, build_td02_request, parse_td02_response
from tests.sandbox_dmp.helpers import (
    OTHER_STRUCTURE,
    PAT_TROIS,
    cx,
    iti41,
    post,
    query,
    read,
    registry_result,
    soap,
    submission_set,
)

MATRICULE, OID = PAT_TROIS[:15], "1.2.250.1.213.1.4.10"
BLOCKED_PS = "899999999999"
DOCTOR = {"authentication_mode": "INDIRECTE_RENFORCEE", "subject_id": "810000000042"}


async def _declare(client: httpx.AsyncClient, **state: Any) -> None:
    r = await client.put(
        "/dmp/_admin/patients", json={"matricule": MATRICULE, "oid": OID, "name": "PAT-TROIS", **state}
    )
    assert r.status_code == 200, r.text


async def _feed(client: httpx.AsyncClient, pki: TestPki) -> str:
    sub = iti41(pki)
    assert registry_result(await post(client, "/dmp/iti41", sub.request)).ok
    return sub.documents[0].unique_id


async def _retrieve(client: httpx.AsyncClient, pki: TestPki, uid: str, **vihf: Any) -> xds.RegistryResult:
    body = xds.build_retrieve_request([xds.RetrieveRequest(REPOSITORY_UNIQUE_ID, uid)])
    env, parts = read(await post(client, "/dmp/iti43", soap(xds.ACTION_ITI43, body, pki, **vihf)))
    return xds.parse_retrieve_response(env, parts)[0]


async def _authorisation(client: httpx.AsyncClient, pki: TestPki, **vihf: Any) -> str:
    resp = await post(client, "/dmp/td02", soap(ACTION_TD02, build_td02_request(PAT_TROIS), pki, **vihf))
    return parse_td02_response(read(resp)[0]).authorisation


async def test_a_blocked_professional_or_structure_sees_nothing_even_in_bris_de_glace(
    client: httpx.AsyncClient, pki: TestPki
) -> None:
    uid = await _feed(client, pki)
    await _declare(client, blocked=[BLOCKED_PS, OTHER_STRUCTURE])
    for who in ({"subject_id": BLOCKED_PS}, {"structure_id": OTHER_STRUCTURE}):
        for purpose in ("normal", "bris_de_glace"):
            vihf = {**DOCTOR, **who, "purpose_of_use": purpose}
            found = await query(client, pki, xds.build_find_documents(PAT_TROIS), **vihf)
            assert found.status == "Failure" and found.errors[0].code == ERR_BLOCKED
            assert (await _retrieve(client, pki, uid, **vihf)).errors[0].code == ERR_BLOCKED
        assert await _authorisation(client, pki, **{**DOCTOR, **who}) == "INTERDIT"
    # Another professional of the same hospital still consults.
    found = await query(client, pki, xds.build_find_documents(PAT_TROIS), **DOCTOR)
    assert uid in {d.unique_id for d in found.documents}
    history = (await client.get("/dmp/access-history", params={"patient": MATRICULE})).json()["accesses"]
    assert ERR_BLOCKED in {h["outcome"] for h in history}


async def test_without_the_patients_authorisation_only_the_emergency_modes_consult(
    client: httpx.AsyncClient, pki: TestPki
) -> None:
    uid = await _feed(client, pki)
    await _declare(client, authorised=[OTHER_STRUCTURE])
    assert await _authorisation(client, pki, **DOCTOR) == "NON_AUTORISE"
    refused = await query(client, pki, xds.build_find_documents(PAT_TROIS), **DOCTOR)
    assert refused.errors[0].code == ERR_FORBIDDEN
    for purpose in ("bris_de_glace", "centre_15"):
        found = await query(
            client, pki, xds.build_find_documents(PAT_TROIS), **DOCTOR, purpose_of_use=purpose
        )
        assert found.status == "Success" and uid in {d.unique_id for d in found.documents}
    # The feed (INDIRECTE) is not a consultation: it finds back its own document whatever the authorisation.
    own = await query(client, pki, xds.build_get_documents(unique_ids=[uid]))
    assert [d.unique_id for d in own.documents] == [uid]
    assert await _authorisation(client, pki, **DOCTOR, structure_id=OTHER_STRUCTURE) == "AUTORISE"


@pytest.mark.parametrize(
    ("purpose", "opposition"),
    [("bris_de_glace", "opposition_break_glass"), ("centre_15", "opposition_centre_15")],
)
async def test_an_opposed_emergency_mode_is_refused(
    client: httpx.AsyncClient, pki: TestPki, purpose: str, opposition: str
) -> None:
    await _feed(client, pki)
    await _declare(client, **{opposition: True})
    found = await query(client, pki, xds.build_find_documents(PAT_TROIS), **DOCTOR, purpose_of_use=purpose)
    assert found.errors[0].code == ERR_OPPOSITION and "opposé" in found.errors[0].context
    normal = await query(client, pki, xds.build_find_documents(PAT_TROIS), **DOCTOR)
    assert normal.status == "Success"


async def test_indirect_authentication_may_not_use_an_emergency_mode(
    client: httpx.AsyncClient, pki: TestPki
) -> None:
    await _feed(client, pki)
    found = await query(client, pki, xds.build_find_documents(PAT_TROIS), purpose_of_use="bris_de_glace")
    assert found.errors[0].code == ERR_FORBIDDEN and "INDIRECTE" in found.errors[0].context


async def test_the_fixture_list_refuses_an_oversized_block_list(client: httpx.AsyncClient) -> None:
    r = await client.put(
        "/dmp/_admin/patients",
        json={"matricule": MATRICULE, "oid": OID, "blocked": [str(i) for i in range(101)]},
    )
    assert r.status_code == 422


async def test_only_the_author_changes_a_documents_visibility(
    client: httpx.AsyncClient, pki: TestPki
) -> None:
    uid = await _feed(client, pki)
    [current] = (await query(client, pki, xds.build_get_documents(unique_ids=[uid]))).documents
    masked = dataclasses.replace(
        current,
        entry_uuid=None,
        confidentiality_codes=[
            *current.confidentiality_codes,
            jdv.load_value_set(jdv.JDV_CONFIDENTIALITY).codes["MASQUE_PS"],
        ],
    )

    async def update(**vihf: Any) -> xds.RegistryResult:
        body = xds.build_update_document_set(submission_set(), metadata_updates=[(masked, "1")])
        return registry_result(await post(client, "/dmp/iti57", soap(xds.ACTION_ITI57, body, pki, **vihf)))

    stranger = await update(**DOCTOR, structure_id=OTHER_STRUCTURE)
    assert stranger.errors[0].code == ERR_FORBIDDEN and "auteur" in stranger.errors[0].context
    # The same document under another patient's submission set: refused before anything changes.
    other_patient = cx("1700133063101")
    await client.put(
        "/dmp/_admin/patients",
        json={"matricule": other_patient[:15], "oid": OID, "name": "AUTRE"},
    )
    body = xds.build_update_document_set(submission_set(other_patient), metadata_updates=[(masked, "1")])
    crossed = registry_result(
        await post(client, "/dmp/iti57", soap(xds.ACTION_ITI57, body, pki, patient=other_patient))
    )
    assert crossed.errors[0].code == "XDSPatientIdDoesNotMatch"
    assert (await update()).ok  # the author's structure
