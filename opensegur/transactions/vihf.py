"""VIHF: the SAML 2.0 assertion identifying the caller of every DMP web service (WS-Security header).

Both sides: the platform builds and signs it with the structure's signing certificate; the DMP sandbox verifies
it as strictly as the real service (signature and chain, freshness, every mandatory attribute and its format) so
that a message accepted locally is not rejected in production for a VIHF detail.

Version: ``VIHF_Version`` is ``3.0``. The ANS kit and the Pro Santé Connect proxy send 3.0; only the newer HL7v2
mapping guide shows 4.0 and the 4.0 attribute list is not public. Emitting 3.0 matches the only complete,
verified attribute set; the verifier accepts both so the sandbox does not reject a 4.0 client.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
import uuid
from dataclasses import dataclass, field
from typing import cast

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from cryptography.hazmat.primitives.serialization import Encoding
from lxml import etree
from signxml import SignatureConfiguration, XMLSigner, XMLVerifier
from signxml.algorithms import CanonicalizationMethod, DigestAlgorithm, SignatureMethod
from signxml.exceptions import InvalidInput, InvalidSignature

from opensegur.documents.metadata import Coded
from opensegur.errors import OpenSegurError
from opensegur.security.pki import (
    PkiError,
    load_certificates,
    load_private_key,
    verify_certificate_chain,
)
from opensegur.security.xmldsig import NS_DS, keyinfo_certificates
from opensegur.transport.soap import SOAP12_NS

__all__ = [
    "AUTHN_MODES",
    "INS_OIDS",
    "NS_DS",
    "NS_HL7",
    "NS_SAML",
    "NS_WSSE",
    "OID_MODE_ACCES",
    "OID_SECTEUR_ACTIVITE",
    "PURPOSES_OF_USE",
    "RESSOURCE_URN",
    "VIHF_VERSION",
    "VihfClaims",
    "VihfContext",
    "VihfError",
    "build_vihf",
    "find_vihf",
    "verify_vihf",
    "wsse_security_header",
]

NS_SAML = "urn:oasis:names:tc:SAML:2.0:assertion"
NS_XSI = "http://www.w3.org/2001/XMLSchema-instance"
NS_HL7 = "urn:hl7-org:v3"
NS_WSSE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"

VIHF_VERSION = "3.0"
ACCEPTED_VERSIONS = frozenset({"3.0", "4.0"})
RESSOURCE_URN = "urn:dmp"
OID_SECTEUR_ACTIVITE = "1.2.250.1.71.4.2.4"
OID_MODE_ACCES = "1.2.250.1.213.1.1.4.248"
OID_PROFESSION = "1.2.250.1.71.1.2.7"  # TRE_G15 ProfessionSante
OID_NON_PS = "1.2.250.1.213.1.1.4.6"  # TRE_A00 ProducteurDocNonPS (AUTOMATE)
OID_VISIBILITE = "1.2.250.1.213.1.1.4.13"
INS_OIDS = frozenset(
    {"1.2.250.1.213.1.4.8", "1.2.250.1.213.1.4.9", "1.2.250.1.213.1.4.10", "1.2.250.1.213.1.4.11"}
)
AUTHN_MODES = frozenset({"INDIRECTE", "INDIRECTE_RENFORCEE", "DIRECTE"})
PURPOSES_OF_USE = {
    "normal": "Accès normal",
    "bris_de_glace": "Accès en bris de glace",
    "centre_15": "Accès par un centre de régulation médicale",
}
ISSUER_FORMAT = "urn:oasis:names:tc:SAML:1.1:nameid-format:X509SubjectName"

A_VERSION = "VIHF_Version"
A_MODE = "Authentification_Mode"
A_STRUCTURE = "Identifiant_Structure"
A_SECTEUR = "Secteur_Activite"
A_SUBJECT_ID = "urn:oasis:names:tc:xspa:1.0:subject:subject-id"
A_ROLE = "urn:oasis:names:tc:xacml:2.0:subject:role"
A_RESOURCE_ID = "urn:oasis:names:tc:xacml:2.0:resource:resource-id"
A_RESSOURCE_URN = "Ressource_URN"
A_PURPOSE = "urn:oasis:names:tc:xspa:1.0:subject:purposeofuse"
A_CONFIDENTIALITY = "urn:oasis:names:tc:xspa:1.0:resource:patient:hl7:confidentiality-code"
A_LPS_NOM = "LPS_Nom"
A_LPS_VERSION = "LPS_Version"
A_LPS_HOMOLOGATION = "LPS_ID_HOMOLOGATION_DMP"
_MANDATORY = (
    A_VERSION,
    A_MODE,
    A_STRUCTURE,
    A_SECTEUR,
    A_SUBJECT_ID,
    A_ROLE,
    A_RESOURCE_ID,
    A_RESSOURCE_URN,
    A_PURPOSE,
    A_LPS_NOM,
    A_LPS_VERSION,
    A_LPS_HOMOLOGATION,
)
# Professions for which the DMP requires a second role (specialty / pharmacist section).
_NEEDS_SPECIALTY = frozenset({"10", "21"})
_INS_CX_RE = re.compile(r"^(?P<ins>[0-9A-Za-z]{13,15})\^\^\^&(?P<oid>[0-9.]+)&ISO\^NH$")
_SAML = f"{{{NS_SAML}}}"


class VihfError(OpenSegurError):
    """The VIHF is missing, malformed, unsigned or untrusted.

    Codes are the sandbox's own (the DMP guide's error codes are not public): ``VIHF_ABSENT``, ``VIHF_FORMAT``,
    ``VIHF_SIGNATURE``, ``VIHF_CERTIFICAT``, ``VIHF_EXPIRE``, ``VIHF_ATTRIBUT_MANQUANT``, ``VIHF_ATTRIBUT_INVALIDE``,
    ``VIHF_RESSOURCE_URN``, ``VIHF_INS``, ``VIHF_VERSION``.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass
class VihfContext:
    """Who calls, for which patient, from which software: everything the VIHF asserts."""

    subject_id: str  # idNat_PS, or idNat of the person responsible for an automated processing
    subject_name: str  # "NOM Prénom", or "software, model, service" for an automaton
    roles: list[Coded]  # JDV_J65: profession (G15) or AUTOMATE (A00), then specialty / role
    structure_id: str  # idNat_Struct
    secteur_activite: str  # TRE_R02 code, e.g. "SA01"
    patient_ins: str  # CX "<INS>^^^&<INS OID>&ISO^NH"
    lps_name: str
    lps_version: str
    lps_homologation_id: str
    purpose_of_use: str = "normal"
    authentication_mode: str = "INDIRECTE"
    authn_context_class: str = "urn:oasis:names:tc:SAML:2.0:ac:classes:unspecified"
    vihf_version: str = VIHF_VERSION
    confidentiality_code: Coded | None = None  # "connexion secrète" (minor): INVISIBLE_REPRESENTANTS_LEGAUX


@dataclass
class VihfClaims:
    """A verified VIHF: the asserted context plus what identifies the assertion and its signer."""

    context: VihfContext
    assertion_id: str
    issue_instant: dt.datetime
    issuer: str
    signer: x509.Certificate
    extra_attributes: dict[str, list[str]] = field(default_factory=dict)


def _fmt_instant(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _parse_instant(value: str | None) -> dt.datetime:
    if not value:
        raise VihfError("VIHF_FORMAT", "IssueInstant missing")
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise VihfError("VIHF_FORMAT", f"IssueInstant {value!r} is not an xs:dateTime") from exc
    if parsed.tzinfo is None:
        raise VihfError("VIHF_FORMAT", "IssueInstant without time zone")
    return parsed.astimezone(dt.UTC)


def _attribute(parent: etree._Element, name: str, values: list[str | etree._Element]) -> None:
    attr = etree.SubElement(parent, f"{_SAML}Attribute", Name=name)
    for value in values:
        av = etree.SubElement(attr, f"{_SAML}AttributeValue")
        if isinstance(value, str):
            av.text = value
        else:
            av.append(value)


def _ce(tag: str, coded: Coded, display: str | None = None) -> etree._Element:
    el = etree.Element(f"{{{NS_HL7}}}{tag}", nsmap={None: NS_HL7, "xsi": NS_XSI})
    el.set(f"{{{NS_XSI}}}type", "CE")
    el.set("code", coded.code)
    el.set("codeSystem", coded.scheme)
    if display or coded.display:
        el.set("displayName", display or coded.display)
    return el


def build_vihf(
    ctx: VihfContext,
    key_pem: bytes,
    cert_pem: bytes,
    now: dt.datetime | None = None,
) -> etree._Element:
    """Build the VIHF assertion and sign it (enveloped XML-DSig, exc-c14n, RSA-SHA256).

    ``cert_pem`` may hold the signing certificate followed by its chain; all of it goes into KeyInfo.
    """
    if ctx.purpose_of_use not in PURPOSES_OF_USE:
        raise ValueError(f"purpose_of_use must be one of {sorted(PURPOSES_OF_USE)}")
    if ctx.authentication_mode not in AUTHN_MODES:
        raise ValueError(f"authentication_mode must be one of {sorted(AUTHN_MODES)}")
    if not ctx.roles:
        raise ValueError("at least one role is required")
    now = now or dt.datetime.now(dt.UTC)
    issuer_dn, chain_pems = _signer_material(cert_pem)
    instant = _fmt_instant(now)

    assertion = etree.Element(
        f"{_SAML}Assertion",
        nsmap={"saml2": NS_SAML, "xsi": NS_XSI},
        ID="_" + uuid.uuid4().hex,
        IssueInstant=instant,
        Version="2.0",
    )
    issuer = etree.SubElement(assertion, f"{_SAML}Issuer", Format=ISSUER_FORMAT)
    issuer.text = issuer_dn
    # signxml replaces this placeholder, which puts ds:Signature right after Issuer as the SAML schema requires.
    etree.SubElement(assertion, f"{{{NS_DS}}}Signature", Id="placeholder", nsmap={"ds": NS_DS})
    subject = etree.SubElement(assertion, f"{_SAML}Subject")
    etree.SubElement(subject, f"{_SAML}NameID").text = ctx.subject_id
    authn = etree.SubElement(assertion, f"{_SAML}AuthnStatement", AuthnInstant=instant)
    authn_ctx = etree.SubElement(authn, f"{_SAML}AuthnContext")
    etree.SubElement(authn_ctx, f"{_SAML}AuthnContextClassRef").text = ctx.authn_context_class

    stmt = etree.SubElement(assertion, f"{_SAML}AttributeStatement")
    _attribute(stmt, A_VERSION, [ctx.vihf_version])
    _attribute(stmt, A_MODE, [ctx.authentication_mode])
    _attribute(stmt, A_STRUCTURE, [ctx.structure_id])
    _attribute(stmt, A_SECTEUR, [f"{ctx.secteur_activite}^{OID_SECTEUR_ACTIVITE}"])
    _attribute(stmt, A_SUBJECT_ID, [ctx.subject_name])
    _attribute(stmt, A_ROLE, [_ce("Role", role) for role in ctx.roles])
    _attribute(stmt, A_RESOURCE_ID, [ctx.patient_ins])
    _attribute(stmt, A_RESSOURCE_URN, [RESSOURCE_URN])
    purpose = Coded(ctx.purpose_of_use, OID_MODE_ACCES, PURPOSES_OF_USE[ctx.purpose_of_use])
    _attribute(stmt, A_PURPOSE, [_ce("PurposeOfUse", purpose)])
    if ctx.confidentiality_code is not None:
        _attribute(stmt, A_CONFIDENTIALITY, [_ce("ConfidentialityCode", ctx.confidentiality_code)])
    _attribute(stmt, A_LPS_NOM, [ctx.lps_name])
    _attribute(stmt, A_LPS_VERSION, [ctx.lps_version])
    _attribute(stmt, A_LPS_HOMOLOGATION, [ctx.lps_homologation_id])

    signer = XMLSigner(
        signature_algorithm=SignatureMethod.RSA_SHA256,
        digest_algorithm=DigestAlgorithm.SHA256,
        c14n_algorithm=CanonicalizationMethod.EXCLUSIVE_XML_CANONICALIZATION_1_0,
    )
    signed = signer.sign(
        assertion,
        key=cast(RSAPrivateKey, load_private_key(key_pem)),
        cert=list(chain_pems),
    )
    return signed


@functools.lru_cache(maxsize=16)
def _signer_material(cert_pem: bytes) -> tuple[str, tuple[str, ...]]:
    # Cached: every VIHF of a structure is signed with the same chain, and parsing it twice per message showed.
    certs = load_certificates(cert_pem)
    return certs[0].subject.rfc4514_string(), tuple(c.public_bytes(Encoding.PEM).decode() for c in certs)


def wsse_security_header(assertion: etree._Element) -> etree._Element:
    """``wsse:Security`` header block carrying the VIHF (the assertion is moved into it, not copied)."""
    sec = etree.Element(f"{{{NS_WSSE}}}Security", nsmap={"wsse": NS_WSSE, "soap": SOAP12_NS})
    sec.set(f"{{{SOAP12_NS}}}mustUnderstand", "true")
    sec.append(assertion)
    return sec


def find_vihf(headers: list[etree._Element]) -> etree._Element:
    """The VIHF assertion of a parsed SOAP header list, or ``VihfError('VIHF_ABSENT')``."""
    for block in headers:
        if block.tag == f"{{{NS_WSSE}}}Security":
            found = block.findall(f"{_SAML}Assertion")
            if len(found) == 1:
                return found[0]
            if len(found) > 1:
                raise VihfError("VIHF_FORMAT", "several SAML assertions in wsse:Security")
    raise VihfError("VIHF_ABSENT", "no SAML assertion in a wsse:Security header")


def _text(el: etree._Element | None) -> str:
    return "".join(el.itertext()).strip() if el is not None else ""


def _coded(av: etree._Element, attr_name: str) -> Coded:
    children = [c for c in av if isinstance(c.tag, str)]
    if len(children) != 1:
        raise VihfError("VIHF_ATTRIBUT_INVALIDE", f"{attr_name}: a single CE element is expected")
    ce = children[0]
    code, system = ce.get("code"), ce.get("codeSystem")
    if not code or not system:
        raise VihfError("VIHF_ATTRIBUT_INVALIDE", f"{attr_name}: CE without code/codeSystem")
    return Coded(code, system, ce.get("displayName", ""))


def verify_vihf(
    assertion_el: etree._Element,
    trusted_ca_pem: bytes,
    *,
    now: dt.datetime | None = None,
    max_age: dt.timedelta = dt.timedelta(minutes=10),
    clock_skew: dt.timedelta = dt.timedelta(minutes=2),
    allowed_ins_oids: frozenset[str] = INS_OIDS,
) -> VihfClaims:
    """Verify signature, certificate chain, freshness and attributes; return the asserted claims.

    Claims are read from the XML signxml returns as signed, never from the input tree, so content added next to
    a valid signature (wrapping attacks) cannot be taken for asserted data.
    """
    now = now or dt.datetime.now(dt.UTC)
    if assertion_el.tag != f"{_SAML}Assertion":
        raise VihfError("VIHF_FORMAT", f"not a SAML 2.0 assertion: {assertion_el.tag}")
    sig = assertion_el.find(f"{{{NS_DS}}}Signature")
    if sig is None:
        raise VihfError("VIHF_SIGNATURE", "the assertion is not signed")
    try:
        chain = keyinfo_certificates(sig)
    except PkiError as exc:
        raise VihfError("VIHF_CERTIFICAT", str(exc)) from exc
    if not chain:
        raise VihfError("VIHF_CERTIFICAT", "no X509Certificate in the signature KeyInfo")
    leaf = chain[0]
    try:
        verify_certificate_chain(leaf, trusted_ca_pem, chain[1:], at=now)
    except PkiError as exc:
        raise VihfError("VIHF_CERTIFICAT", str(exc)) from exc

    config = SignatureConfiguration(
        location="./",
        signature_methods=frozenset({SignatureMethod.RSA_SHA256, SignatureMethod.RSA_SHA512}),
        digest_algorithms=frozenset({DigestAlgorithm.SHA256, DigestAlgorithm.SHA512}),
        verification_time=now,
    )
    try:
        # signxml's bundled XSD rejects the ec:InclusiveNamespaces PrefixList the ANS kit puts in its c14n
        # method; the structure is still checked by signxml's parser and by the reference checks below.
        result = XMLVerifier().verify(
            assertion_el, x509_cert=leaf, expect_config=config, id_attribute="ID", validate_schema=False
        )
    except (InvalidSignature, InvalidInput) as exc:
        raise VihfError("VIHF_SIGNATURE", f"signature verification failed: {exc}") from exc
    assert not isinstance(result, list)
    signed = result.signed_xml
    if signed is None or signed.tag != f"{_SAML}Assertion" or signed.get("ID") != assertion_el.get("ID"):
        raise VihfError("VIHF_SIGNATURE", "the signature does not cover the assertion")
    ref = result.signature_xml.find(f"{{{NS_DS}}}SignedInfo/{{{NS_DS}}}Reference")
    if ref is None or ref.get("URI") not in ("", f"#{assertion_el.get('ID')}"):
        raise VihfError("VIHF_SIGNATURE", "the signature reference does not designate the assertion")

    if signed.get("Version") != "2.0":
        raise VihfError("VIHF_FORMAT", "SAML Version 2.0 expected")
    issued = _parse_instant(signed.get("IssueInstant"))
    if issued > now + clock_skew:
        raise VihfError("VIHF_EXPIRE", "IssueInstant is in the future")
    if issued < now - max_age:
        raise VihfError("VIHF_EXPIRE", f"assertion issued at {issued.isoformat()} is older than {max_age}")
    conditions = signed.find(f"{_SAML}Conditions")
    if conditions is not None:
        not_after = conditions.get("NotOnOrAfter")
        if not_after and _parse_instant(not_after) <= now - clock_skew:
            raise VihfError("VIHF_EXPIRE", "assertion NotOnOrAfter has passed")
        not_before = conditions.get("NotBefore")
        if not_before and _parse_instant(not_before) > now + clock_skew:
            raise VihfError("VIHF_EXPIRE", "assertion NotBefore is in the future")
    issuer = _text(signed.find(f"{_SAML}Issuer"))
    if issuer != leaf.subject.rfc4514_string():
        raise VihfError("VIHF_CERTIFICAT", "Issuer does not match the signing certificate's subject DN")
    subject_id = _text(signed.find(f"{_SAML}Subject/{_SAML}NameID"))
    if not subject_id:
        raise VihfError("VIHF_ATTRIBUT_MANQUANT", "Subject/NameID")
    class_ref = _text(signed.find(f"{_SAML}AuthnStatement/{_SAML}AuthnContext/{_SAML}AuthnContextClassRef"))
    if not class_ref:
        raise VihfError("VIHF_ATTRIBUT_MANQUANT", "AuthnStatement/AuthnContext/AuthnContextClassRef")

    attrs: dict[str, list[etree._Element]] = {}
    for attr in signed.iterfind(f"{_SAML}AttributeStatement/{_SAML}Attribute"):
        attrs.setdefault(attr.get("Name", ""), []).extend(attr.findall(f"{_SAML}AttributeValue"))
    for name in _MANDATORY:
        if not attrs.get(name):
            raise VihfError("VIHF_ATTRIBUT_MANQUANT", name)

    def single(name: str) -> str:
        values = attrs[name]
        if len(values) != 1 or not _text(values[0]) or any(isinstance(c.tag, str) for c in values[0]):
            raise VihfError("VIHF_ATTRIBUT_INVALIDE", f"{name}: exactly one text value expected")
        return _text(values[0])

    version = single(A_VERSION)
    if version not in ACCEPTED_VERSIONS:
        raise VihfError("VIHF_VERSION", f"unsupported VIHF_Version {version!r}")
    mode = single(A_MODE)
    if mode not in AUTHN_MODES:
        raise VihfError("VIHF_ATTRIBUT_INVALIDE", f"{A_MODE} {mode!r}")
    if single(A_RESSOURCE_URN) != RESSOURCE_URN:
        raise VihfError("VIHF_RESSOURCE_URN", f"{A_RESSOURCE_URN} must be {RESSOURCE_URN}")
    secteur, _, secteur_oid = single(A_SECTEUR).partition("^")
    if not secteur or secteur_oid != OID_SECTEUR_ACTIVITE:
        raise VihfError("VIHF_ATTRIBUT_INVALIDE", f"{A_SECTEUR} must be <code>^{OID_SECTEUR_ACTIVITE}")
    ins_cx = single(A_RESOURCE_ID)
    match = _INS_CX_RE.match(ins_cx)
    if match is None:
        raise VihfError("VIHF_INS", f"{A_RESOURCE_ID} is not an INS CX (<INS>^^^&<OID>&ISO^NH)")
    if match["oid"] not in allowed_ins_oids:
        raise VihfError("VIHF_INS", f"INS assigning authority {match['oid']} is not an INS OID")
    roles = [_coded(av, A_ROLE) for av in attrs[A_ROLE]]
    if roles[0].scheme not in (OID_PROFESSION, OID_NON_PS):
        raise VihfError("VIHF_ATTRIBUT_INVALIDE", "first role must be a profession (TRE_G15) or TRE_A00 code")
    if roles[0].scheme == OID_PROFESSION and roles[0].code in _NEEDS_SPECIALTY and len(roles) < 2:
        raise VihfError("VIHF_ATTRIBUT_INVALIDE", f"profession {roles[0].code} requires a specialty role")
    purposes = attrs[A_PURPOSE]
    if len(purposes) != 1:
        raise VihfError("VIHF_ATTRIBUT_INVALIDE", f"{A_PURPOSE}: exactly one value expected")
    purpose = _coded(purposes[0], A_PURPOSE)
    if purpose.scheme != OID_MODE_ACCES or purpose.code not in PURPOSES_OF_USE:
        raise VihfError("VIHF_ATTRIBUT_INVALIDE", f"{A_PURPOSE} {purpose.code!r}/{purpose.scheme}")
    confidentiality = None
    if attrs.get(A_CONFIDENTIALITY):
        confidentiality = _coded(attrs[A_CONFIDENTIALITY][0], A_CONFIDENTIALITY)

    known = set(_MANDATORY) | {A_CONFIDENTIALITY}
    extra = {n: [_text(v) for v in vs] for n, vs in attrs.items() if n not in known}
    ctx = VihfContext(
        subject_id=subject_id,
        subject_name=single(A_SUBJECT_ID),
        roles=roles,
        structure_id=single(A_STRUCTURE),
        secteur_activite=secteur,
        patient_ins=ins_cx,
        lps_name=single(A_LPS_NOM),
        lps_version=single(A_LPS_VERSION),
        lps_homologation_id=single(A_LPS_HOMOLOGATION),
        purpose_of_use=purpose.code,
        authentication_mode=mode,
        authn_context_class=class_ref,
        vihf_version=version,
        confidentiality_code=confidentiality,
    )
    return VihfClaims(
        context=ctx,
        assertion_id=signed.get("ID", ""),
        issue_instant=issued,
        issuer=issuer,
        signer=leaf,
        extra_attributes=extra,
    )
