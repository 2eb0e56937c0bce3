from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Callable
from pathlib import Path

import pytest
from lxml import etree

from opensegur.documents.metadata import Coded
from opensegur.security.pki import TestPki, certificate_chain_pem, ensure_test_pki
from opensegur.transactions.vihf import (
    NS_DS,
    NS_SAML,
    NS_WSSE,
    RESSOURCE_URN,
    VIHF_VERSION,
    VihfContext,
    VihfError,
    build_vihf,
    find_vihf,
    verify_vihf,
    wsse_security_header,
)
from opensegur.transport.soap import envelope, parse_envelope

S = f"{{{NS_SAML}}}"
NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return ensure_test_pki(Path(tmp_path_factory.mktemp("pki")))


def _ctx(**kw: object) -> VihfContext:
    base = VihfContext(
        subject_id="801234567897",
        subject_name="OpenSégur PFI, 1.0, DMP feed",
        roles=[Coded("AUTOMATE", "1.2.250.1.213.1.1.4.6", "Automate")],
        structure_id="1010000000009",
        secteur_activite="SA01",
        patient_ins="279035121518989^^^&1.2.250.1.213.1.4.10&ISO^NH",
        lps_name="OpenSégur",
        lps_version="0.1.0",
        lps_homologation_id="HOMOLOG-0001",
    )
    for k, v in kw.items():
        setattr(base, k, v)
    return base


def _sign(pki: TestPki, ctx: VihfContext | None = None, now: dt.datetime = NOW) -> etree._Element:
    return build_vihf(ctx or _ctx(), pki.signing_key.read_bytes(), certificate_chain_pem(pki), now=now)


def _verify(pki: TestPki, el: etree._Element, now: dt.datetime = NOW) -> object:
    return verify_vihf(el, pki.ca_cert.read_bytes(), now=now)


def _attr(el: etree._Element, name: str) -> etree._Element:
    found = el.find(f"{S}AttributeStatement/{S}Attribute[@Name='{name}']")
    assert found is not None
    return found


def test_structure_and_round_trip(pki: TestPki) -> None:
    ctx = _ctx(
        roles=[
            Coded("10", "1.2.250.1.71.1.2.7", "Médecin"),
            Coded("SM07", "1.2.250.1.71.4.2.5", "Médecine générale"),
        ],
        confidentiality_code=Coded("INVISIBLE_REPRESENTANTS_LEGAUX", "1.2.250.1.213.1.1.4.13"),
        authentication_mode="INDIRECTE_RENFORCEE",
    )
    el = _sign(pki, ctx)
    children = [c.tag for c in el]
    assert children[:3] == [f"{S}Issuer", f"{{{NS_DS}}}Signature", f"{S}Subject"]
    assert el.get("Version") == "2.0" and el.get("IssueInstant") == NOW.strftime("%Y-%m-%dT%H:%M:%S.000Z")
    sig = el.find(f"{{{NS_DS}}}Signature")
    assert sig is not None
    assert sig.find(f".//{{{NS_DS}}}SignatureMethod").get("Algorithm").endswith("rsa-sha256")
    assert sig.find(f".//{{{NS_DS}}}Reference").get("URI") == "#" + el.get("ID", "")
    assert len(sig.findall(f".//{{{NS_DS}}}X509Certificate")) == 2
    assert _attr(el, "Ressource_URN").findtext(f"{S}AttributeValue") == RESSOURCE_URN
    assert _attr(el, "Secteur_Activite").findtext(f"{S}AttributeValue") == "SA01^1.2.250.1.71.4.2.4"
    purpose = _attr(el, "urn:oasis:names:tc:xspa:1.0:subject:purposeofuse")[0][0]
    assert purpose.get("code") == "normal" and purpose.get("codeSystem") == "1.2.250.1.213.1.1.4.248"

    claims = verify_vihf(el, pki.ca_cert.read_bytes(), now=NOW + dt.timedelta(seconds=30))
    assert claims.context == ctx
    assert claims.context.vihf_version == VIHF_VERSION
    assert claims.issuer.startswith("CN=CH OPENSEGUR SANDBOX CACHET")
    assert claims.assertion_id == el.get("ID")


def test_survives_transport_in_a_soap_header(pki: TestPki) -> None:
    el = _sign(pki)
    raw = envelope(etree.Element("{urn:x}Body"), [wsse_security_header(el)])
    headers, _ = parse_envelope(raw)
    assert headers[0].tag == f"{{{NS_WSSE}}}Security"
    claims = verify_vihf(find_vihf(headers), pki.ca_cert.read_bytes(), now=NOW)
    assert claims.context.patient_ins.startswith("279035121518989")


def test_absent_vihf() -> None:
    with pytest.raises(VihfError) as exc:
        find_vihf([etree.Element("{urn:x}Other")])
    assert exc.value.code == "VIHF_ABSENT"


def _set_value(name: str, value: str) -> Callable[[etree._Element], None]:
    def mutate(el: etree._Element) -> None:
        av = _attr(el, name).find(f"{S}AttributeValue")
        assert av is not None
        av.text = value

    return mutate


def _drop(name: str) -> Callable[[etree._Element], None]:
    def mutate(el: etree._Element) -> None:
        a = _attr(el, name)
        a.getparent().remove(a)

    return mutate


@pytest.mark.parametrize(
    "mutate",
    [
        _set_value("Identifiant_Structure", "1999999999999"),
        _set_value("urn:oasis:names:tc:xacml:2.0:resource:resource-id", "1^^^&1.2.250.1.213.1.4.8&ISO^NH"),
        _drop("LPS_Nom"),
        lambda el: el.set("IssueInstant", (NOW + dt.timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%S.000Z")),
        lambda el: el.find(f"{S}Subject/{S}NameID").__setattr__("text", "899999999999"),
    ],
)
def test_any_tampering_breaks_the_signature(pki: TestPki, mutate: Callable[[etree._Element], None]) -> None:
    el = _sign(pki)
    mutate(el)
    with pytest.raises(VihfError) as exc:
        _verify(pki, el)
    assert exc.value.code == "VIHF_SIGNATURE"


def test_unsigned_and_wrong_ca(pki: TestPki, tmp_path: Path) -> None:
    el = _sign(pki)
    unsigned = copy.deepcopy(el)
    unsigned.remove(unsigned.find(f"{{{NS_DS}}}Signature"))
    with pytest.raises(VihfError) as exc:
        _verify(pki, unsigned)
    assert exc.value.code == "VIHF_SIGNATURE"
    other = ensure_test_pki(tmp_path)
    with pytest.raises(VihfError) as exc:
        verify_vihf(el, other.ca_cert.read_bytes(), now=NOW)
    assert exc.value.code == "VIHF_CERTIFICAT"


def test_signature_by_an_untrusted_key_with_a_trusted_cert(pki: TestPki, tmp_path: Path) -> None:
    other = ensure_test_pki(tmp_path)
    # Signed with another key but claiming the trusted certificate in KeyInfo.
    el = build_vihf(_ctx(), other.signing_key.read_bytes(), pki.signing_cert.read_bytes(), now=NOW)
    with pytest.raises(VihfError) as exc:
        _verify(pki, el)
    assert exc.value.code == "VIHF_SIGNATURE"


def test_freshness(pki: TestPki) -> None:
    el = _sign(pki)
    with pytest.raises(VihfError, match="older") as exc:
        _verify(pki, el, now=NOW + dt.timedelta(hours=1))
    assert exc.value.code == "VIHF_EXPIRE"
    future = _sign(pki, now=NOW + dt.timedelta(minutes=30))
    with pytest.raises(VihfError, match="future"):
        _verify(pki, future, now=NOW)
    # Within the tolerated clock skew.
    assert _verify(pki, _sign(pki, now=NOW + dt.timedelta(seconds=90)), now=NOW)


@pytest.mark.parametrize(
    ("ctx_changes", "code"),
    [
        ({"patient_ins": "279035121518989^^^&1.2.250.1.71.4.2.1&ISO^NH"}, "VIHF_INS"),
        ({"patient_ins": "279035121518989"}, "VIHF_INS"),
        ({"roles": [Coded("10", "1.2.250.1.71.1.2.7")]}, "VIHF_ATTRIBUT_INVALIDE"),
        ({"roles": [Coded("SM07", "1.2.250.1.71.4.2.5")]}, "VIHF_ATTRIBUT_INVALIDE"),
        ({"vihf_version": "2.0"}, "VIHF_VERSION"),
        ({"secteur_activite": ""}, "VIHF_ATTRIBUT_INVALIDE"),
        ({"lps_homologation_id": ""}, "VIHF_ATTRIBUT_INVALIDE"),
    ],
)
def test_signed_but_invalid_content(pki: TestPki, ctx_changes: dict[str, object], code: str) -> None:
    el = _sign(pki, _ctx(**ctx_changes))
    with pytest.raises(VihfError) as exc:
        _verify(pki, el)
    assert exc.value.code == code


def test_wrong_ressource_urn_and_missing_attribute_are_detected_even_if_re_signed(pki: TestPki) -> None:
    from signxml import XMLSigner

    el = _sign(pki)
    _set_value("Ressource_URN", "urn:autre")(el)
    sig = el.find(f"{{{NS_DS}}}Signature")
    el.replace(sig, etree.Element(f"{{{NS_DS}}}Signature", Id="placeholder"))
    resigned = XMLSigner().sign(
        el, key=pki.signing_key.read_bytes(), cert=pki.signing_cert.read_bytes().decode()
    )
    with pytest.raises(VihfError) as exc:
        _verify(pki, resigned)
    assert exc.value.code == "VIHF_RESSOURCE_URN"

    el2 = _sign(pki)
    _drop("Authentification_Mode")(el2)
    el2.replace(el2.find(f"{{{NS_DS}}}Signature"), etree.Element(f"{{{NS_DS}}}Signature", Id="placeholder"))
    resigned2 = XMLSigner().sign(
        el2, key=pki.signing_key.read_bytes(), cert=pki.signing_cert.read_bytes().decode()
    )
    with pytest.raises(VihfError) as exc:
        _verify(pki, resigned2)
    assert exc.value.code == "VIHF_ATTRIBUT_MANQUANT" and "Authentification_Mode" in exc.value.message


def test_builder_rejects_bad_context(pki: TestPki) -> None:
    with pytest.raises(ValueError):
        _sign(pki, _ctx(purpose_of_use="urgence"))
    with pytest.raises(ValueError):
        _sign(pki, _ctx(authentication_mode="CPS"))
