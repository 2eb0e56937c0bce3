"""`opensegur doctor`: each link tested for real where it can be (Orthanc, a listening socket, certificates),
and what it tells the operator to fix."""

from __future__ import annotations

import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from opensegur.cli import main
from opensegur.config import Settings
from opensegur.ops.doctor import (
    Verdict,
    check_certificates,
    check_directory,
    check_mllp,
    check_pacs,
    check_services,
    render,
)
from opensegur.security.drimbox_directory import TrustedDrimbox, sign_directory
from opensegur.security.pki import common_name_of, ensure_test_pki, load_certificate
from tests.pacs import orthanc

pytestmark = pytest.mark.requirement("IMG-DEPLOYMENT-CHECK")
NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)


def _cert(path: Path, not_after: datetime) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "drimbox.chu-x.test")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_after - timedelta(days=365))
        .not_valid_after(not_after)
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return str(path)


def test_certificates_expired_soon_to_expire_valid_or_unreadable(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        dmp_signing_cert=_cert(tmp_path / "dmp.pem", NOW + timedelta(days=200)),
        dmp_tls_cert=_cert(tmp_path / "tls.pem", NOW + timedelta(days=10)),
        mss_client_cert=_cert(tmp_path / "mss.pem", NOW - timedelta(days=1)),
        insi_client_cert=str(tmp_path / "absent.pem"),
    )
    verdicts = [(c.verdict, c.detail.split(" ")[0]) for c in check_certificates(settings, NOW)]
    assert verdicts[0] == (Verdict.OK, "valide")
    assert verdicts[1] == (Verdict.WARNING, "expire")
    assert verdicts[2] == (Verdict.FAILED, "expiré")
    assert verdicts[3][0] is Verdict.FAILED
    assert "Renouveler" in render(check_certificates(settings, NOW))


def test_the_pacs_is_tested_with_the_ae_title_it_declares(tmp_path: Path) -> None:
    with orthanc(tmp_path / "pacs") as pacs:
        ours = Settings(
            data_dir=tmp_path,
            pacs_host=pacs.endpoint.host,
            pacs_port=pacs.endpoint.port,
            pacs_aet=pacs.endpoint.called_aet,
            drimbox_aet=pacs.endpoint.calling_aet,
            drimbox_wado_url="https://drimbox.chu-x.test/dicom-web",
            pacs_timeout_s=5,
        )
        assert [c.verdict for c in check_pacs(ours)] == [Verdict.OK, Verdict.OK]
        stranger = ours.model_copy(update={"drimbox_aet": "INCONNU"})
        [failed] = check_pacs(stranger)
        assert failed.verdict is Verdict.FAILED and "titre AE INCONNU" in failed.fix
    assert check_pacs(Settings(data_dir=tmp_path))[0].verdict is Verdict.ABSENT


def test_the_mllp_listener_is_tested_by_connecting(tmp_path: Path) -> None:
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        assert check_mllp(Settings(data_dir=tmp_path, host="127.0.0.1", mllp_port=port)).verdict is Verdict.OK
    closed = check_mllp(Settings(data_dir=tmp_path, host="127.0.0.1", mllp_port=port))
    assert closed.verdict is Verdict.FAILED and "opensegur serve" in closed.fix


async def test_the_national_services_answer_or_not(tmp_path: Path) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.host == "dmp.test":
            return httpx.Response(503)
        if request.url.path.endswith("/.well-known/openid-configuration"):
            return httpx.Response(200, json={"issuer": "https://psc.test/realms/x"})
        if request.url.host == "pacs.test" and request.url.params.get("limit") == "1":
            return httpx.Response(200, json=[])
        raise httpx.ConnectError("refused", request=request)

    settings = Settings(
        data_dir=tmp_path,
        dmp_iti18_url="https://dmp.test/registry",
        drimbox_psc_introspection_url="https://psc.test/realms/x/protocol/openid-connect/token/introspect",
        annuaire_url="https://annuaire.test/fhir",
        pacs_host="pacs.test",
        drimbox_wado_url="https://drimbox.test/dicom-web",
        pacs_wado_url="http://pacs.test:8042/dicom-web/",
    )
    checks = await check_services(settings, transport=httpx.MockTransport(answer))
    assert [c.verdict for c in checks] == [Verdict.FAILED, Verdict.OK, Verdict.FAILED, Verdict.OK]
    assert "503" in checks[0].detail and "ConnectError" in checks[2].detail
    assert checks[3].link == "PACS : WADO-RS"


def test_the_command_fails_only_on_a_failure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor", "--no-listener", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "NON CONFIGURÉ" in out and "0 en échec" in out


def test_the_list_of_drimboxes_is_checked(tmp_path: Path) -> None:
    ans = ensure_test_pki(tmp_path / "ans")
    path = tmp_path / "liste-blanche.xml"
    entry = TrustedDrimbox("DB-1", "https://db1.chu-y.fr/dicom-web")
    path.write_bytes(sign_directory([entry], ans.signing_key.read_bytes(), [ans.signing_cert.read_bytes()]))
    signer = common_name_of(load_certificate(ans.signing_cert.read_bytes()))
    settings = Settings(
        data_dir=tmp_path,
        drimbox_directory_file=path,
        drimbox_directory_ca=ans.ca_cert,
        drimbox_directory_signer_cn=signer,
    )
    ok = check_directory(settings)
    assert ok.verdict == Verdict.OK and "1 DRIMbox" in ok.detail
    other = ensure_test_pki(tmp_path / "other")
    wrong = settings.model_copy(update={"drimbox_directory_ca": other.ca_cert})
    failed = check_directory(wrong)
    assert failed.verdict == Verdict.FAILED and "non reconnu" in failed.detail
    # The ANS's own signer is expected unless told otherwise.
    default = check_directory(
        settings.model_copy(update={"drimbox_directory_signer_cn": "Liste Blanche DRIM-M"})
    )
    assert default.verdict == Verdict.FAILED and "Signataire inattendu" in default.detail
    assert check_directory(Settings(data_dir=tmp_path)).verdict == Verdict.ABSENT
