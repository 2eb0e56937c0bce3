"""FIDO2 / WebAuthn security keys as a local second factor: enrolment, login, rename, revocation.

The ceremonies are the ``webauthn`` package's; this module adds what it leaves to the relying party:

- **one origin, one RP ID**, both taken from ``public_base_url`` (the address the hospital publishes, which also
  builds redirects and cookies), never from the request's Host header: an assertion made for another site
  (phishing proxy, other host name) carries that site's origin and RP ID hash and is refused;
- **challenges kept server-side**, bound to the login session that asked for them, valid five minutes and used
  once: each verification consumes the session's challenge whatever its outcome, so a captured response can
  never be played again;
- **the signature counter**: an assertion whose counter is not above the stored one is a cloned key or a replay
  (the package refuses it); the new counter is written only if nobody moved it meanwhile (compare-and-set);
- **ownership**: at login only the pending session's account's live keys count (another account's key, a
  revoked one: refused), and failures count towards the same brute-force limit as TOTP codes.

Challenges live in ``auth_flow`` (one row per session and purpose, ``webauthn:<purpose>:<session>``), like the
OpenID Connect logins under way: shared by every process and host of the platform.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

from sqlalchemy import CursorResult, delete, func, select, update
from sqlalchemy.orm import Session
from webauthn import (
    generate_authentication_options,
    generate_registration_options,
    verify_authentication_response,
    verify_registration_response,
)
from webauthn.helpers import (
    base64url_to_bytes,
    bytes_to_base64url,
    options_to_json_dict,
    parse_authentication_credential_json,
    parse_registration_credential_json,
)
from webauthn.helpers.exceptions import WebAuthnException
from webauthn.helpers.structs import (
    AttestationConveyancePreference,
    AuthenticationCredential,
    AuthenticatorSelectionCriteria,
    PublicKeyCredentialDescriptor,
    RegistrationCredential,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)

from opensegur.security import audit, ratelimit
from opensegur.security.accounts import TOO_MANY_ATTEMPTS
from opensegur.security.actor import Actor
from opensegur.security.clock import as_utc
from opensegur.security.errors import LoginRefused, SecurityError
from opensegur.store.models import Account, AuthFlow, WebauthnCredential, WebSession, utcnow

if TYPE_CHECKING:
    from opensegur.config import Settings

__all__ = [
    "ENROL_WINDOW",
    "MAX_KEYS",
    "RelyingParty",
    "WebauthnRefused",
    "active_credentials",
    "authenticate",
    "authentication_options",
    "decode_body",
    "enrolment_refusal",
    "has_active_credential",
    "register",
    "registration_options",
    "relying_party",
    "rename",
    "revoke",
]

KEY_REFUSED = "Clé de sécurité refusée : utilisez une clé enregistrée sur votre compte, sur ce site."
UNREADABLE = "Réponse de la clé de sécurité illisible."
EXPIRED = "Demande expirée ou déjà utilisée : recommencez."
CHALLENGE_TTL = timedelta(minutes=5)
_TIMEOUT_MS = 120_000  # what the browser waits for a touch; below CHALLENGE_TTL
# Adding a key makes whoever holds it able to log in: only a session that has just passed its strong login may do
# it, so a workstation left open in a ward cannot be used to plant a key.
ENROL_WINDOW = timedelta(minutes=15)
MAX_KEYS = 10  # live keys per account: a spare or two per person, not a store for anybody's keys
_LABEL_MAX = 100  # webauthn_credential.label
_CREDENTIAL_ID_MAX = 400  # webauthn_credential.credential_id (base64url)
_RP_NAME = "OpenSégur"
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")
_BINARY_FIELDS = ("clientDataJSON", "attestationObject", "authenticatorData", "signature", "userHandle")


class WebauthnRefused(LoginRefused):
    """A ceremony refused; ``status`` 400 for a response that cannot be read, 401 for one that does not hold."""

    def __init__(self, message: str, status: int = 401) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class RelyingParty:
    id: str  # the RP ID: the host name keys are bound to
    origin: str  # scheme://host[:port] the browser must report


def relying_party(settings: Settings) -> RelyingParty:
    """From ``public_base_url``; without it, ``http://localhost:<http_port>`` (browsers refuse an IP address as
    RP ID, and treat ``localhost`` over plain HTTP as a secure context)."""
    parts = urlsplit(settings.public_base_url or f"http://localhost:{settings.http_port}")
    host = (parts.hostname or "").lower()
    if parts.scheme not in ("http", "https") or not host:
        raise SecurityError(
            "public_base_url invalide pour les clés de sécurité : http(s)://hôte[:port] attendu"
        )
    default_port = 443 if parts.scheme == "https" else 80
    port = f":{parts.port}" if parts.port and parts.port != default_port else ""
    return RelyingParty(id=host, origin=f"{parts.scheme}://{host}{port}")


# ---- challenges ------------------------------------------------------------------------------------------


def _challenge_key(purpose: str, ws: WebSession) -> str:
    return f"webauthn:{purpose}:{ws.id}"


def _keep_challenge(s: Session, purpose: str, ws: WebSession, challenge: bytes, now: datetime) -> None:
    """Only the latest options of a session are answerable (they replace any earlier ones); expired flows of any
    session go."""
    key = _challenge_key(purpose, ws)
    s.execute(delete(AuthFlow).where((AuthFlow.key == key) | (AuthFlow.expires_at <= now)))
    s.add(
        AuthFlow(key=key, data={"challenge": bytes_to_base64url(challenge)}, expires_at=now + CHALLENGE_TTL)
    )
    s.flush()


def _take_challenge(s: Session, purpose: str, ws: WebSession, now: datetime) -> str | None:
    """The session's live challenge (base64url), removed: the first verification uses it up, right or wrong. One
    DELETE … RETURNING: a concurrent verification of the same challenge gets nothing and is refused."""
    found = s.execute(
        delete(AuthFlow)
        .where(AuthFlow.key == _challenge_key(purpose, ws))
        .returning(AuthFlow.data, AuthFlow.expires_at)
    ).first()
    if found is None or as_utc(found.expires_at) <= now:
        return None
    return str(found.data["challenge"])


# ---- keys ------------------------------------------------------------------------------------------------


def active_credentials(s: Session, account_id: int) -> list[WebauthnCredential]:
    return list(
        s.scalars(
            select(WebauthnCredential)
            .where(WebauthnCredential.account_id == account_id, WebauthnCredential.revoked_at.is_(None))
            .order_by(WebauthnCredential.id)
        )
    )


def has_active_credential(s: Session, account_id: int) -> bool:
    """Whether the password step must stop at the second factor for this account."""
    return bool(
        s.scalar(
            select(func.count(WebauthnCredential.id)).where(
                WebauthnCredential.account_id == account_id, WebauthnCredential.revoked_at.is_(None)
            )
        )
    )


def _descriptors(credentials: list[WebauthnCredential]) -> list[PublicKeyCredentialDescriptor]:
    return [PublicKeyCredentialDescriptor(id=base64url_to_bytes(c.credential_id)) for c in credentials]


def _clean_label(label: str) -> str:
    label = " ".join(label.split())
    if not label or len(label) > _LABEL_MAX:
        raise WebauthnRefused(f"Nom de clé invalide : entre 1 et {_LABEL_MAX} caractères", 400)
    return label


# ---- enrolment -------------------------------------------------------------------------------------------


def enrolment_refusal(ws: WebSession, now: datetime | None = None) -> str | None:
    """Why this session may not add a key (French), or None. A strong session opened less than ENROL_WINDOW ago:
    a first key comes after a TOTP code or a Pro Santé Connect login, never after the password alone — otherwise
    whoever learnt the password could enrol a key of theirs and turn it into strong logins."""
    now = now or utcnow()
    if not ws.strong:
        return (
            "Ajouter une clé demande une connexion forte (code à usage unique, autre clé, "
            "ou Pro Santé Connect) : déconnectez-vous puis reconnectez-vous avec votre second facteur."
        )
    if as_utc(ws.created_at) + ENROL_WINDOW <= now:
        minutes = int(ENROL_WINDOW.total_seconds() // 60)
        return (
            f"Ajouter une clé demande une connexion de moins de {minutes} minutes : "
            "déconnectez-vous puis reconnectez-vous."
        )
    return None


def registration_options(
    s: Session, rp: RelyingParty, account: Account, ws: WebSession, *, now: datetime | None = None
) -> dict[str, Any]:
    """``PublicKeyCredentialCreationOptions`` as JSON for ``navigator.credentials.create``."""
    now = now or utcnow()
    refusal = enrolment_refusal(ws, now)
    if refusal is not None:
        raise WebauthnRefused(refusal, 403)
    existing = active_credentials(s, account.id)
    if len(existing) >= MAX_KEYS:
        raise WebauthnRefused(f"Déjà {MAX_KEYS} clés actives : révoquez-en une avant d'en ajouter", 400)
    options = generate_registration_options(
        rp_id=rp.id,
        rp_name=_RP_NAME,
        # The user handle goes to the key and back: an opaque number, no name or RPPS.
        user_id=str(account.id).encode(),
        user_name=account.login,
        user_display_name=account.display_name,
        timeout=_TIMEOUT_MS,
        attestation=AttestationConveyancePreference.NONE,
        authenticator_selection=AuthenticatorSelectionCriteria(
            resident_key=ResidentKeyRequirement.DISCOURAGED,
            user_verification=UserVerificationRequirement.PREFERRED,
        ),
        exclude_credentials=_descriptors(existing),
    )
    _keep_challenge(s, "enrol", ws, options.challenge, now)
    return options_to_json_dict(options)


def _check_encoding(credential: Any) -> None:
    """The binary fields must be base64url: Python's decoder silently skips other characters, which would turn
    garbage into a well-formed (and merely wrong) answer instead of an unreadable one."""
    if not isinstance(credential, dict) or not isinstance(credential.get("response"), dict):
        raise WebauthnRefused(UNREADABLE, 400)
    fields = [credential.get("id"), credential.get("rawId")]
    fields += [credential["response"].get(name) for name in _BINARY_FIELDS]
    if any(isinstance(value, str) and not _BASE64URL.fullmatch(value) for value in fields):
        raise WebauthnRefused(UNREADABLE, 400)


def _parse_registration(credential: Any) -> RegistrationCredential:
    _check_encoding(credential)
    try:
        return parse_registration_credential_json(credential)
    # The package wraps most decoding errors, not all of them (base64 of attacker-chosen text).
    except (WebAuthnException, ValueError, TypeError) as exc:
        raise WebauthnRefused(UNREADABLE, 400) from exc


def register(
    s: Session,
    rp: RelyingParty,
    actor: Actor,
    account: Account,
    ws: WebSession,
    credential: Any,
    label: str,
    *,
    now: datetime | None = None,
) -> WebauthnCredential:
    """Verify the browser's answer to ``registration_options`` and keep the key."""
    now = now or utcnow()
    refusal = enrolment_refusal(ws, now)
    if refusal is not None:
        raise WebauthnRefused(refusal, 403)
    parsed = _parse_registration(credential)
    label = _clean_label(label)
    challenge = _take_challenge(s, "enrol", ws, now)
    if challenge is None:
        raise WebauthnRefused(EXPIRED, 400)
    try:
        verified = verify_registration_response(
            credential=parsed,
            expected_challenge=base64url_to_bytes(challenge),
            expected_rp_id=rp.id,
            expected_origin=rp.origin,
        )
    except (WebAuthnException, ValueError, TypeError) as exc:
        raise WebauthnRefused("Clé de sécurité refusée : enregistrement non valide pour ce site.") from exc
    credential_id = bytes_to_base64url(verified.credential_id)
    if len(credential_id) > _CREDENTIAL_ID_MAX:
        raise WebauthnRefused(UNREADABLE, 400)
    taken = s.scalar(select(WebauthnCredential.id).where(WebauthnCredential.credential_id == credential_id))
    if taken is not None:
        raise WebauthnRefused("Cette clé est déjà enregistrée.", 400)
    if len(active_credentials(s, account.id)) >= MAX_KEYS:
        raise WebauthnRefused(f"Déjà {MAX_KEYS} clés actives : révoquez-en une avant d'en ajouter", 400)
    row = WebauthnCredential(
        account_id=account.id,
        credential_id=credential_id,
        public_key=verified.credential_public_key,
        sign_count=verified.sign_count,
        label=label,
        created_at=now,
    )
    s.add(row)
    s.flush()
    audit.record_admin(s, actor, "webauthn_enrol", {"login": account.login, "key": row.id, "label": label})
    return row


# ---- login -----------------------------------------------------------------------------------------------


def _check_not_locked(s: Session, account: Account, now: datetime) -> None:
    if (
        not account.active
        or (account.locked_until is not None and as_utc(account.locked_until) > now)
        or ratelimit.exceeded(s, ratelimit.second_factor_key(account.id), ratelimit.SECOND_FACTOR_LIMIT, now)
    ):
        raise WebauthnRefused(
            TOO_MANY_ATTEMPTS if account.active else KEY_REFUSED, 429 if account.active else 401
        )


def authentication_options(
    s: Session, rp: RelyingParty, account: Account, ws: WebSession, *, now: datetime | None = None
) -> dict[str, Any]:
    """``PublicKeyCredentialRequestOptions`` as JSON for ``navigator.credentials.get``: the account's live
    keys only."""
    now = now or utcnow()
    _check_not_locked(s, account, now)
    keys = active_credentials(s, account.id)
    if not keys:
        raise WebauthnRefused("Aucune clé de sécurité active sur ce compte : utilisez votre code.", 400)
    options = generate_authentication_options(
        rp_id=rp.id,
        timeout=_TIMEOUT_MS,
        allow_credentials=_descriptors(keys),
        user_verification=UserVerificationRequirement.PREFERRED,
    )
    _keep_challenge(s, "login", ws, options.challenge, now)
    return options_to_json_dict(options)


def _parse_assertion(credential: Any) -> AuthenticationCredential:
    _check_encoding(credential)
    try:
        return parse_authentication_credential_json(credential)
    except (WebAuthnException, ValueError, TypeError) as exc:
        raise WebauthnRefused(UNREADABLE, 400) from exc


def _failure(s: Session, account: Account, now: datetime) -> None:
    """Count a refused key towards the second factor's brute-force limit (shared with TOTP codes)."""
    if ratelimit.record_failure(
        s, ratelimit.second_factor_key(account.id), ratelimit.SECOND_FACTOR_LIMIT, now
    ):
        account.locked_until = now + ratelimit.SECOND_FACTOR_LIMIT.window
    s.flush()


def authenticate(
    s: Session,
    rp: RelyingParty,
    account: Account,
    ws: WebSession,
    credential: Any,
    *,
    now: datetime | None = None,
) -> WebauthnCredential:
    """Verify the browser's answer to ``authentication_options``; returns the key used. WebauthnRefused
    otherwise, after counting the failure in ``s``: like ``accounts.verify_second_factor``, the caller commits
    the refusal before answering."""
    now = now or utcnow()
    _check_not_locked(s, account, now)
    challenge = _take_challenge(s, "login", ws, now)
    try:
        parsed = _parse_assertion(credential)
        if challenge is None:
            raise WebauthnRefused(EXPIRED, 400)
        key = s.scalar(
            select(WebauthnCredential).where(
                WebauthnCredential.credential_id == bytes_to_base64url(parsed.raw_id),
                WebauthnCredential.account_id == account.id,
                WebauthnCredential.revoked_at.is_(None),
            )
        )
        if key is None:
            raise WebauthnRefused(KEY_REFUSED)
        try:
            verified = verify_authentication_response(
                credential=parsed,
                expected_challenge=base64url_to_bytes(challenge),
                expected_rp_id=rp.id,
                expected_origin=rp.origin,
                credential_public_key=key.public_key,
                credential_current_sign_count=key.sign_count,
            )
        except (WebAuthnException, ValueError, TypeError) as exc:
            raise WebauthnRefused(KEY_REFUSED) from exc
        moved = s.execute(
            update(WebauthnCredential)
            .where(WebauthnCredential.id == key.id, WebauthnCredential.sign_count == key.sign_count)
            .values(sign_count=verified.new_sign_count)
            .execution_options(synchronize_session=False)
        )
        if cast(CursorResult[Any], moved).rowcount != 1:
            raise WebauthnRefused(KEY_REFUSED)  # another login with the same counter got there first
    except WebauthnRefused:
        _failure(s, account, now)
        raise
    s.refresh(key)
    ratelimit.clear(s, ratelimit.second_factor_key(account.id))
    s.flush()
    return key


# ---- lifecycle -------------------------------------------------------------------------------------------


def rename(s: Session, key: WebauthnCredential, label: str, by: Actor) -> None:
    key.label = _clean_label(label)
    s.flush()
    audit.record_admin(s, by, "webauthn_rename", {"key": key.id, "label": key.label})


def revoke(s: Session, key: WebauthnCredential, by: Actor, *, now: datetime | None = None) -> None:
    """A lost or replaced key stops opening anything at once; revoking it again keeps the first time."""
    if key.revoked_at is None:
        key.revoked_at = now or utcnow()
        s.flush()
    audit.record_admin(s, by, "webauthn_revoke", {"account_id": key.account_id, "key": key.id})


def decode_body(body: bytes) -> dict[str, Any]:
    """The JSON object a page sent; WebauthnRefused (400) for anything else."""
    try:
        value = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise WebauthnRefused(UNREADABLE, 400) from exc
    if not isinstance(value, dict):
        raise WebauthnRefused(UNREADABLE, 400)
    return value
