"""Mutual TLS between DRIMboxes, on the wire: the source serves its WADO-RS on its own TLS port to listed DRIMboxes
only (their operator certificate, as the ANS's list names it), and the consumer's client checks that the DRIMbox
answering is the one the list names at that address."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from opensegur.connectors.drimbox_client import DrimboxClient, remote_tls
from opensegur.flows.drimbox_ports import RemoteRefused
from opensegur.security.drimbox_directory import TrustedDrimbox, sign_directory
from opensegur.security.pki import TestPki, common_name_of, ensure_test_pki, load_certificate
from opensegur.store.models import AuditEvent
from tests.dmp import helpers
from tests.dmp.drimbox_sites import drimbox_site, exam, publish_example
from tests.imaging.helpers import ANS_ACCEPT
from tests.ports import free_port
from tests.psc_tokens import psc_access_token

pytestmark = pytest.mark.requirement("IMG-DRIMBOX-SOURCE")
schematron_cache = helpers.schematron_cache


def _subject(path: Path) -> str:
    return load_certificate(path.read_bytes()).subject.rfc4514_string()


def _write_list(path: Path, ans: TestPki, *entries: TrustedDrimbox) -> None:
    path.write_bytes(
        sign_directory(list(entries), ans.signing_key.read_bytes(), [ans.signing_cert.read_bytes()])
    )


async def test_images_are_served_in_mutual_tls_to_listed_drimboxes_only(
    tmp_path: Path, schematron_cache: Path
) -> None:
    igc = ensure_test_pki(tmp_path / "igc")  # issues both DRIMboxes' certificates, as the IGC-Santé does
    ans = ensure_test_pki(tmp_path / "ans")
    listed = tmp_path / "liste-blanche.xml"
    tls_port = free_port()
    # The consumer's operator certificate is listed: its client certificate's subject, written CN first.
    consumer = TrustedDrimbox("DB-B", "db-b.test", "Site B", _subject(igc.client_cert))
    source = TrustedDrimbox("DB-A", f"127.0.0.1:{tls_port}", "Site A", _subject(igc.server_cert))
    _write_list(listed, ans, source, consumer)
    settings = {
        "drimbox_wado_url": f"https://127.0.0.1:{tls_port}/dicom-web",
        "drimbox_tls_port": tls_port,
        "drimbox_tls_cert": str(igc.server_cert),
        "drimbox_tls_key": str(igc.server_key),
        "drimbox_tls_client_ca": str(igc.ca_cert),
        "drimbox_directory_file": str(listed),
        "drimbox_directory_ca": str(ans.ca_cert),
        "drimbox_directory_signer_cn": common_name_of(load_certificate(ans.signing_cert.read_bytes())),
    }
    study, _ = exam()
    async with drimbox_site(tmp_path, schematron_cache, **settings) as (rt, _pacs):
        assert rt.drimbox_tls_port == tls_port
        kos = await publish_example(rt)
        token = await psc_access_token(rt.endpoints["psc"])
        headers = {"Authorization": f"Bearer {token}", "KOS-SOPInstanceUID": kos, "Accept": ANS_ACCEPT}
        path = f"/dicom-web/studies/{study}/series/{study}.1"
        mutual = remote_tls(igc.client_cert, igc.client_key, igc.ca_cert)

        # The plain port serves no image once mutual TLS is configured, whatever the token.
        async with httpx.AsyncClient(timeout=30) as plain:
            r = await plain.get(f"http://127.0.0.1:{rt.http_port}{path}", headers=headers)
            assert r.status_code == 403 and "Certificat client requis" in r.json()["detail"]
        # Without a client certificate the handshake fails.
        anonymous = remote_tls(None, None, igc.ca_cert)
        async with httpx.AsyncClient(timeout=30, verify=anonymous) as http:
            with pytest.raises(httpx.TransportError):
                await http.get(f"https://127.0.0.1:{tls_port}{path}", headers=headers)
        # The TLS port has the WADO-RS only: no page, no API.
        async with httpx.AsyncClient(timeout=30, verify=mutual) as http:
            assert (await http.get(f"https://127.0.0.1:{tls_port}/connexion")).status_code == 404
            assert (await http.get(f"https://127.0.0.1:{tls_port}/api/identities")).status_code == 404

        client = DrimboxClient(timeout=30, verify=mutual)
        try:
            url = f"https://127.0.0.1:{tls_port}{path}"
            parts = [p async for p in client.retrieve_series(url, token, kos, source.certificate_dn)]
            assert len(parts) == 2 and all("transfer-syntax" in p.headers["content-type"] for p in parts)
            for p in parts:
                p.body.close()
            with rt.db.session() as s:
                audited = s.scalars(select(AuditEvent).where(AuditEvent.action == "drimbox_retrieve")).one()
                assert audited.detail["drimbox"] == "DB-B"
            # The consumer's side: a server whose certificate is not the listed one is not read.
            with pytest.raises(RemoteRefused, match="n'est pas celui que la liste blanche nomme"):
                [p async for p in client.retrieve_series(url, token, kos, consumer.certificate_dn)]
            # The list read again at each call: the consumer's certificate no longer listed, its calls refused.
            _write_list(listed, ans, source)
            with pytest.raises(RemoteRefused, match="aucun DRIMbox de la liste blanche") as refused:
                [p async for p in client.retrieve_series(url, token, kos, source.certificate_dn)]
            assert refused.value.status == 403
        finally:
            await client.aclose()
