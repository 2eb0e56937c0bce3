"""The DMP client's access history: read from the sandbox's JSON extension, refused when it is not what it says."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from opensegur.connectors.dmp_client import DmpClient, DmpCredentials, DmpEndpoints, DmpIdentity
from opensegur.flows.dmp_consult import PROFESSIONS, Consulter, DmpAccess
from opensegur.flows.dmp_exchanges import DmpUnavailableError
from opensegur.security.pki import TestPki, ensure_test_pki

CX = "279035121518989^^^&1.2.250.1.213.1.4.10&ISO^NH"
DOCTOR = Consulter("10000000012", "Dr Test", (PROFESSIONS["medecin"],), "1750000028")
ROW = {
    "at": "2026-12-01T10:00:00+00:00",
    "transaction": "iti18",
    "subject": {"id": "810000000012", "name": "Dr Test"},
    "structure": "1750000028",
    "authentication_mode": "INDIRECTE_RENFORCEE",
    "purpose_of_use": "bris_de_glace",
    "outcome": "DMP_SBX_ACCES_INTERDIT",
}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return ensure_test_pki(Path(tmp_path_factory.mktemp("history-pki")))


async def _history(pki: TestPki, answer: httpx.Response) -> list[DmpAccess] | None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answer

    client = DmpClient(
        DmpEndpoints("", "", "", access_history="http://dmp.test/dmp/access-history"),
        DmpCredentials(pki.signing_cert, pki.signing_key),
        DmpIdentity(oid_root="1.2.250.1.999.88"),
        transport=httpx.MockTransport(handler),
    )
    try:
        return await client.access_history(DOCTOR, CX)
    finally:
        await client.aclose()
        assert all(r.url.params["patient"] == CX[:15] for r in seen)


async def test_the_history_is_read_newest_first_with_its_refusals(pki: TestPki) -> None:
    older = {**ROW, "at": "2026-11-30T09:00:00+00:00", "outcome": "Success", "purpose_of_use": "normal"}
    history = await _history(pki, httpx.Response(200, json={"accesses": [older, ROW]}))
    assert history is not None and [a.outcome for a in history] == ["DMP_SBX_ACCES_INTERDIT", "Success"]
    assert history[0].refused and not history[1].refused
    assert history[0].action_label == "Recherche de documents"


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(200, json={"accesses": [{**ROW, "at": "hier"}]}),
        httpx.Response(200, json={"accesses": [{"at": ROW["at"]}]}),
        httpx.Response(200, content=b"<html>maintenance</html>"),
        httpx.Response(503, json={}),
    ],
)
async def test_an_unreadable_or_failed_answer_is_said_unavailable(
    pki: TestPki, answer: httpx.Response
) -> None:
    with pytest.raises(DmpUnavailableError, match="Historique des accès"):
        await _history(pki, answer)


async def test_without_an_address_there_is_no_history(pki: TestPki) -> None:
    client = DmpClient(
        DmpEndpoints("", "", ""),
        DmpCredentials(pki.signing_cert, pki.signing_key),
        DmpIdentity(oid_root="1.2.250.1.999.88"),
    )
    assert await client.access_history(DOCTOR, CX) is None
    await client.aclose()
