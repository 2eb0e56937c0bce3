"""OpenID Connect login: Pro Santé Connect and the hospital's single sign-on, as a relying party.

authlib's client builds the authorization request (state, PKCE S256) and redeems the code; the ID token is
checked here with joserfc (authlib's JOSE library) against the provider's JWKS: signature by an asymmetric
algorithm the provider announces (never ``none``, never HS256 keyed by our own client secret), ``iss``,
``aud``/``azp``, ``exp``, ``iat`` and the ``nonce`` of this login. Userinfo is then read, and its ``sub`` must
be the ID token's.

Pending logins are kept server-side, in memory, keyed by ``state`` and taken at most once: a replayed or
forged ``state`` finds nothing, and so does a replayed ``nonce`` (it lives in the pending login). Each is bound
to the browser that started it by a cookie holding a random value, whose digest is stored, so a victim's browser
cannot be made to finish a login an attacker started (login CSRF). Memory rather than a signed cookie: a cookie
can be presented again, a server-side entry is gone after first use; a restart loses at most the logins under
way, which the person starts again.

No account is ever created from a provider's answer: accounts come from HR. A first login links the provider's
``sub`` to the account found by RPPS (PSC) or by the configured login claim (SSO).
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal

import httpx
from authlib.integrations.httpx_client import AsyncOAuth2Client, OAuthError
from joserfc import jwt
from joserfc.errors import ClaimError, ExpiredTokenError, JoseError
from joserfc.jwk import KeySet
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from opensegur.errors import OpenSegurError
from opensegur.security import audit
from opensegur.store.db import Database
from opensegur.store.models import Account, AuthFlow

__all__ = [
    "ALLOWED_ALGORITHMS",
    "FLOW_TTL",
    "Identity",
    "OidcClient",
    "OidcRefused",
    "Pending",
    "PendingLogins",
    "Provider",
    "ProviderName",
    "find_account",
    "verify_id_token",
]

ProviderName = Literal["psc", "sso"]
# Asymmetric only: with HS256 the key would be our client secret, which the provider's JWKS cannot vouch for.
ALLOWED_ALGORITHMS = ("RS256", "PS256", "ES256")
FLOW_TTL = 600  # seconds between leaving for the provider and coming back
LEEWAY = 60  # clock skew tolerated on exp and iat
_FLOW_KEY = "oidc:"  # auth_flow rows of OpenID Connect logins
_METADATA_TTL = 3600
_JWKS_REFETCH_AFTER = 30  # an unknown kid refetches the keys (rotation), at most this often
_TIMEOUT = httpx.Timeout(10.0)

_LABELS = {"psc": "Pro Santé Connect", "sso": "la connexion établissement"}


class OidcRefused(OpenSegurError):
    """A login refused: ``message`` is shown (French), ``reason`` goes to the audit trail."""

    def __init__(self, message: str, reason: str, status: int = 401) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason
        self.status = status


def _invalid_token(provider: ProviderName, reason: str) -> OidcRefused:
    return OidcRefused(
        f"Connexion par {_LABELS[provider]} refusée : la réponse du fournisseur d'identité n'est pas valide. "
        "Reconnectez-vous.",
        reason,
    )


@dataclass(frozen=True)
class Provider:
    """One configured provider. ``strong_acr``/``strong_amr``: values that attest a strong authentication."""

    name: ProviderName
    issuer: str
    client_id: str
    client_secret: str
    scope: str = "openid"
    acr_values: str | None = None
    strong_acr: frozenset[str] = frozenset()
    strong_amr: frozenset[str] = frozenset()
    # SSO: the claim holding the account's login, to link an account on its first login.
    login_claim: str | None = None

    @property
    def label(self) -> str:
        return _LABELS[self.name]


@dataclass(frozen=True)
class Pending:
    provider: ProviderName
    state: str
    nonce: str
    verifier: str
    redirect_uri: str
    retour: str
    browser_digest: str
    expires_at: float


class PendingLogins:
    """Logins under way, each taken once, in the shared database: the provider may send the browser back to any
    serving host. Taking is one DELETE … RETURNING, so two hosts can never both finish the same login."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def put(self, pending: Pending) -> None:
        now = datetime.now(UTC)
        with self.db.session() as s:
            s.execute(delete(AuthFlow).where(AuthFlow.expires_at <= now))
            s.add(
                AuthFlow(
                    key=_FLOW_KEY + pending.state,
                    data=asdict(pending),
                    expires_at=datetime.fromtimestamp(pending.expires_at, UTC),
                )
            )

    def take(self, state: str) -> Pending | None:
        with self.db.session() as s:
            data = s.scalar(
                delete(AuthFlow).where(AuthFlow.key == _FLOW_KEY + state).returning(AuthFlow.data)
            )
        if data is None:
            return None
        pending = Pending(**data)
        return pending if pending.expires_at > time.time() else None


def browser_digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


@dataclass(frozen=True)
class Identity:
    """Who the provider says logged in."""

    provider: ProviderName
    sub: str
    strong: bool
    acr: str | None
    amr: tuple[str, ...]
    rpps: str | None
    login: str | None
    # PSC's access token, for the calls made in the professional's name (``psc_delegation``); never stored.
    access_token: str | None = field(default=None, repr=False)
    expires_in: float | None = None


def verify_id_token(
    raw: str,
    keys: KeySet,
    provider: Provider,
    nonce: str,
    algorithms: tuple[str, ...] = ALLOWED_ALGORITHMS,
    now: int | None = None,
) -> dict[str, Any]:
    """The claims of an ID token this provider issued to us for this login; OidcRefused otherwise."""
    try:
        token = jwt.decode(raw, keys, algorithms=list(algorithms))
    except JoseError as exc:
        raise _invalid_token(provider.name, f"id_token signature: {type(exc).__name__}") from None
    registry = jwt.JWTClaimsRegistry(
        now=now,
        leeway=LEEWAY,
        iss={"essential": True, "value": provider.issuer},
        aud={"essential": True, "value": provider.client_id},
        sub={"essential": True},
        exp={"essential": True},
        iat={"essential": True},
        nonce={"essential": True, "value": nonce},
    )
    claims = token.claims
    try:
        registry.validate(claims)
    except ExpiredTokenError:
        raise _invalid_token(provider.name, "id_token expired") from None
    except ClaimError as exc:
        raise _invalid_token(provider.name, f"id_token claim: {exc.description or exc}") from None
    audience = claims["aud"]
    # OpenID Connect Core §3.1.3.7: with several audiences, azp must name us.
    if isinstance(audience, list) and len(audience) > 1 and claims.get("azp") != provider.client_id:
        raise _invalid_token(provider.name, "id_token azp")
    if not isinstance(claims["iat"], int | float) or claims["iat"] > (now or time.time()) + LEEWAY:
        raise _invalid_token(provider.name, "id_token iat in the future")
    return claims


def _rpps_of(userinfo: dict[str, Any]) -> str | None:
    """PSC's SubjectNameID is the national id: 8 followed by the RPPS."""
    national = userinfo.get("SubjectNameID")
    if isinstance(national, str) and len(national) == 12 and national.startswith("8") and national.isdigit():
        return national[1:]
    for other in userinfo.get("otherIds") or []:
        value = other.get("identifiant") if isinstance(other, dict) else None
        if other.get("origine") == "RPPS" and isinstance(value, str) and len(value) == 11 and value.isdigit():
            return value
    return None


def _amr(claims: dict[str, Any]) -> tuple[str, ...]:
    amr = claims.get("amr")
    if isinstance(amr, str):
        return (amr,)
    return tuple(v for v in amr if isinstance(v, str)) if isinstance(amr, list) else ()


def identity_of(provider: Provider, claims: dict[str, Any], userinfo: dict[str, Any]) -> Identity:
    acr = claims.get("acr") if isinstance(claims.get("acr"), str) else None
    amr = _amr(claims)
    strong = (acr is not None and acr in provider.strong_acr) or bool(set(amr) & provider.strong_amr)
    login = None
    if provider.login_claim:
        value = claims.get(provider.login_claim, userinfo.get(provider.login_claim))
        login = value if isinstance(value, str) and value else None
    return Identity(
        provider.name,
        claims["sub"],
        strong,
        acr,
        amr,
        _rpps_of(userinfo) if provider.name == "psc" else None,
        login,
    )


class OidcClient:
    """Talks to the providers: discovery and keys cached per issuer, one authlib client per exchange."""

    def __init__(self, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._transport = transport
        self._metadata: dict[str, tuple[float, dict[str, Any]]] = {}
        self._keys: dict[str, tuple[float, KeySet]] = {}

    def _http(self, provider: Provider) -> AsyncOAuth2Client:
        return AsyncOAuth2Client(
            client_id=provider.client_id,
            client_secret=provider.client_secret,
            token_endpoint_auth_method="client_secret_basic",
            scope=provider.scope,
            code_challenge_method="S256",
            timeout=_TIMEOUT,
            transport=self._transport,
        )

    async def _get_json(self, provider: Provider, url: str) -> dict[str, Any]:
        try:
            async with httpx.AsyncClient(timeout=_TIMEOUT, transport=self._transport) as http:
                response = await http.get(url)
                response.raise_for_status()
                body = response.json()
        except (httpx.HTTPError, ValueError):
            raise _unreachable(provider, url) from None
        if not isinstance(body, dict):
            raise _unreachable(provider, url)
        return body

    async def metadata(self, provider: Provider) -> dict[str, Any]:
        cached = self._metadata.get(provider.issuer)
        if cached is not None and cached[0] > time.time():
            return cached[1]
        meta = await self._get_json(provider, f"{provider.issuer}/.well-known/openid-configuration")
        # Discovery §4.3: a document naming another issuer is not this provider's (mix-up, poisoning).
        if meta.get("issuer") != provider.issuer or not all(
            isinstance(meta.get(k), str) for k in ("authorization_endpoint", "token_endpoint", "jwks_uri")
        ):
            raise OidcRefused(
                f"Connexion par {provider.label} impossible : configuration du fournisseur incohérente.",
                "discovery issuer mismatch",
                502,
            )
        self._metadata[provider.issuer] = (time.time() + _METADATA_TTL, meta)
        return meta

    async def _key_set(self, provider: Provider, meta: dict[str, Any], refresh: bool) -> KeySet:
        cached = self._keys.get(provider.issuer)
        if cached is not None and not (refresh and cached[0] + _JWKS_REFETCH_AFTER < time.time()):
            return cached[1]
        document = await self._get_json(provider, meta["jwks_uri"])
        try:
            keys = KeySet.import_key_set(document)  # type: ignore[arg-type]
        except (JoseError, ValueError, TypeError, KeyError):
            raise _unreachable(provider, meta["jwks_uri"]) from None
        self._keys[provider.issuer] = (time.time(), keys)
        return keys

    async def begin(
        self, provider: Provider, redirect_uri: str, retour: str, browser: str
    ) -> tuple[str, Pending]:
        """The provider's authorization URL to send the browser to, and the login to keep until it returns."""
        meta = await self.metadata(provider)
        state, nonce, verifier = (secrets.token_urlsafe(32) for _ in range(3))
        extra = {"acr_values": provider.acr_values} if provider.acr_values else {}
        async with self._http(provider) as client:
            url, _ = client.create_authorization_url(
                meta["authorization_endpoint"],
                state=state,
                code_verifier=verifier,
                nonce=nonce,
                redirect_uri=redirect_uri,
                **extra,
            )
        pending = Pending(
            provider.name,
            state,
            nonce,
            verifier,
            redirect_uri,
            retour,
            browser_digest(browser),
            time.time() + FLOW_TTL,
        )
        return url, pending

    async def finish(self, provider: Provider, pending: Pending, code: str) -> Identity:
        """Redeem the code, check the ID token, read userinfo: who logged in, or OidcRefused."""
        meta = await self.metadata(provider)
        advertised = meta.get("id_token_signing_alg_values_supported") or ["RS256"]
        algorithms = tuple(a for a in ALLOWED_ALGORITHMS if a in advertised)
        async with self._http(provider) as client:
            try:
                token = await client.fetch_token(
                    meta["token_endpoint"],
                    grant_type="authorization_code",
                    code=code,
                    code_verifier=pending.verifier,
                    redirect_uri=pending.redirect_uri,
                )
            except (OAuthError, httpx.HTTPError, ValueError) as exc:
                raise _invalid_token(provider.name, f"token endpoint: {type(exc).__name__}") from None
            raw = token.get("id_token")
            if not isinstance(raw, str):
                raise _invalid_token(provider.name, "no id_token")
            keys = await self._key_set(provider, meta, refresh=False)
            try:
                claims = verify_id_token(raw, keys, provider, pending.nonce, algorithms)
            except OidcRefused:
                # A key rotated since our last fetch: fetch once more and judge again.
                fresh = await self._key_set(provider, meta, refresh=True)
                if fresh is keys:
                    raise
                claims = verify_id_token(raw, fresh, provider, pending.nonce, algorithms)
            userinfo: dict[str, Any] = {}
            if isinstance(meta.get("userinfo_endpoint"), str):
                try:
                    response = await client.get(meta["userinfo_endpoint"])
                    response.raise_for_status()
                    body = response.json()
                except (httpx.HTTPError, ValueError):
                    raise _invalid_token(provider.name, "userinfo unreadable") from None
                # Core §5.3.2: userinfo of another subject is a substitution, not more claims.
                if not isinstance(body, dict) or body.get("sub") != claims["sub"]:
                    raise _invalid_token(provider.name, "userinfo sub mismatch")
                userinfo = body
        identity = identity_of(provider, claims, userinfo)
        access = token.get("access_token")
        expires_in = token.get("expires_in")
        return replace(
            identity,
            access_token=access if isinstance(access, str) else None,
            expires_in=float(expires_in) if isinstance(expires_in, int | float) else None,
        )


def _unreachable(provider: Provider, url: str) -> OidcRefused:
    return OidcRefused(
        f"Connexion par {provider.label} impossible : le fournisseur d'identité ne répond pas. "
        "Réessayez dans un instant.",
        f"unreachable: {url}",
        502,
    )


def find_account(session: Session, identity: Identity) -> Account:
    """The active account this identity opens, linking it on a first login; OidcRefused for anyone else.

    Linking needs exactly one active, not yet linked account with that RPPS (PSC) or login (SSO): two accounts
    with the same RPPS are an HR error to fix, not a guess to make.
    """
    column = Account.psc_sub if identity.provider == "psc" else Account.sso_sub
    account = session.scalar(select(Account).where(column == identity.sub))
    if account is None:
        if identity.provider == "psc" and identity.rpps:
            match = Account.rpps == identity.rpps
        elif identity.provider == "sso" and identity.login:
            match = Account.login == identity.login.strip().casefold()
        else:
            raise _unknown(identity)
        candidates = session.scalars(
            select(Account).where(match, column.is_(None), Account.active.is_(True))
        ).all()
        if len(candidates) != 1:
            raise _unknown(identity)
        account = candidates[0]
        if identity.provider == "psc":
            account.psc_sub = identity.sub
        else:
            account.sso_sub = identity.sub
        audit.record(
            session,
            None,
            "identity_link",
            None,
            "connexion",
            {"method": identity.provider, "sub": identity.sub},
            actor_name=account.login,
        )
    if not account.active:
        raise _unknown(identity)
    return account


def _unknown(identity: Identity) -> OidcRefused:
    return OidcRefused(
        f"Connexion par {_LABELS[identity.provider]} réussie, mais aucun compte actif de la plateforme ne "
        "correspond à cette identité. Les comptes sont créés à partir des données RH de l'établissement : "
        "adressez-vous à votre administrateur.",
        "no account",
        403,
    )
