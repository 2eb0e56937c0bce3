"""The state of the sandbox Pro Santé Connect: its fictitious professionals, its signing key, the client it
knows, and the codes and tokens it has handed out.

Written on joserfc (the JOSE library of authlib's author, which authlib's own ``jose`` now defers to) rather
than authlib's ``AuthorizationServer``: authlib ships that server wired to Flask and Django only, and the request
and response adapters it would need here are larger than the handful of checks PSC's authorization code + PKCE
flow makes. Everything is kept in memory but the key: a restarted sandbox forgets its codes and tokens, as a
real provider's expire, while the platform's cached JWKS stays valid.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import os
import secrets
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from joserfc import jwt
from joserfc.jwk import RSAKey

from opensegur.ops.demo import luhn_complete

__all__ = [
    "ACR_EIDAS1",
    "SANDBOX_CLIENT_ID",
    "SANDBOX_CLIENT_SECRET",
    "AccessToken",
    "Grant",
    "Professional",
    "PscSandbox",
    "SANDBOX_PROFESSIONALS",
]

ACR_EIDAS1 = "eidas1"
SANDBOX_CLIENT_ID = "opensegur-plateforme"
# Published by /sandbox/endpoints like the sandbox MSSanté password: the sandbox runs only in demo/sandbox mode.
SANDBOX_CLIENT_SECRET = "bac-a-sable-psc-secret-client"
CODE_TTL = 60  # seconds: the platform redeems the code at once
TOKEN_TTL = 600
_KEY_FILE = "psc-signing-key.pem"
_MAX_PENDING = 10_000  # codes and tokens kept at most: a loop of logins cannot grow the sandbox without bound


@dataclass(frozen=True)
class Professional:
    """A fictitious holder of an e-CPS. ``profession``: TRE_G15 code (10 médecin, 50 sage-femme, 60 infirmier)."""

    login: str
    password: str
    rpps: str
    family_name: str
    given_name: str
    profession: str
    civility: str
    savoir_faire: str | None = None

    @property
    def national_id(self) -> str:
        """SubjectNameID: the RPPS prefixed with its type, 8."""
        return "8" + self.rpps

    @property
    def sub(self) -> str:
        # A technical identifier, stable per professional, that is not the RPPS: a relying party must read the
        # RPPS from userinfo, as with the real service.
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"psc-sandbox:{self.national_id}"))


def _professional(
    login: str,
    rpps_prefix: str,
    family: str,
    given: str,
    profession: str,
    civility: str,
    savoir_faire: str | None = None,
) -> Professional:
    return Professional(
        login,
        f"psc-{login}-2026",
        luhn_complete(rpps_prefix),
        family,
        given,
        profession,
        civility,
        savoir_faire,
    )


# The demo GHT's professionals (ops.demo gives them RPPS 1000000001…) and one the demo hospital does not know.
SANDBOX_PROFESSIONALS: tuple[Professional, ...] = (
    _professional("pierre.reault", "1000000001", "RÉAULT", "Pierre", "10", "DR", "SM14"),
    _professional("isabelle.agnes", "1000000002", "AGNÈS", "Isabelle", "10", "DR", "SM54"),
    _professional("daniel.okafor", "1000000004", "OKAFOR", "Daniel", "50", "M"),
    _professional("sophie.morel", "1000000005", "MOREL", "Sophie", "60", "MME"),
    _professional("julie.marchand", "1000000099", "MARCHAND", "Julie", "10", "DR", "SM26"),
)


@dataclass
class Grant:
    """An authorization code, redeemable once for tokens."""

    professional: Professional
    client_id: str
    redirect_uri: str
    code_challenge: str
    nonce: str
    acr: str
    scope: str
    auth_time: int
    expires_at: float
    # Tokens issued with this code: revoked if the code is presented again (RFC 6749 §4.1.2).
    tokens: list[str] = field(default_factory=list)
    redeemed: bool = False


@dataclass
class AccessToken:
    professional: Professional
    client_id: str
    scope: str
    issued_at: int
    expires_at: int


def load_or_create_key(directory: Path) -> RSAKey:
    """The signing key of this data directory, generated on first use: tokens signed before a restart still
    verify, and the key never leaves the directory (owner-only file)."""
    path = directory / _KEY_FILE
    if path.exists():
        return RSAKey.import_key(path.read_bytes())
    directory.mkdir(parents=True, exist_ok=True)
    key = RSAKey.generate_key(2048, private=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(key.as_pem(private=True))
    tmp.replace(path)
    return key


def _is_loopback(uri: str) -> bool:
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.fragment:
        return False
    if parts.hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(parts.hostname).is_loopback
    except ValueError:
        return False


def s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


class PscSandbox:
    """One sandbox provider: ``issuer`` is the URL it is mounted at (``…/psc``)."""

    def __init__(
        self,
        data_dir: Path,
        issuer: str,
        *,
        redirect_uris: Sequence[str] | None = None,
        professionals: Sequence[Professional] = SANDBOX_PROFESSIONALS,
    ) -> None:
        self.issuer = issuer.rstrip("/")
        self.key = load_or_create_key(data_dir)
        self.kid = self.key.thumbprint()
        self.client_id = SANDBOX_CLIENT_ID
        self.client_secret = SANDBOX_CLIENT_SECRET
        # None: any loopback URI, since the platform beside the sandbox listens on a port picked at start.
        self.redirect_uris = tuple(redirect_uris) if redirect_uris is not None else None
        self.professionals = {p.login: p for p in professionals}
        self._grants: dict[str, Grant] = {}
        self._tokens: dict[str, AccessToken] = {}

    # ---- clients

    def redirect_uri_allowed(self, uri: str) -> bool:
        return uri in self.redirect_uris if self.redirect_uris is not None else _is_loopback(uri)

    def client_authenticated(self, client_id: str, client_secret: str) -> bool:
        return secrets.compare_digest(client_id.encode(), self.client_id.encode()) and secrets.compare_digest(
            client_secret.encode(), self.client_secret.encode()
        )

    # ---- people

    def authenticate(self, login: str, password: str) -> Professional | None:
        professional = self.professionals.get(login.strip().casefold())
        # Compared even for an unknown login, so the answer time does not tell which logins exist.
        expected = professional.password if professional is not None else secrets.token_hex(16)
        if secrets.compare_digest(password.encode(), expected.encode()) and professional is not None:
            return professional
        return None

    # ---- codes and tokens

    def _prune(self, now: float) -> None:
        self._grants = {c: g for c, g in self._grants.items() if g.expires_at > now}
        self._tokens = {t: a for t, a in self._tokens.items() if a.expires_at > now}
        while len(self._grants) >= _MAX_PENDING:
            self._grants.pop(next(iter(self._grants)))
        while len(self._tokens) >= _MAX_PENDING:
            self._tokens.pop(next(iter(self._tokens)))

    def issue_code(
        self,
        professional: Professional,
        *,
        client_id: str,
        redirect_uri: str,
        code_challenge: str,
        nonce: str,
        acr: str,
        scope: str,
    ) -> str:
        now = time.time()
        self._prune(now)
        code = secrets.token_urlsafe(32)
        self._grants[code] = Grant(
            professional, client_id, redirect_uri, code_challenge, nonce, acr, scope, int(now), now + CODE_TTL
        )
        return code

    def redeem(self, code: str, client_id: str, redirect_uri: str, verifier: str) -> Grant | str:
        """The grant of ``code`` once its PKCE verifier and redirect URI match; else the OAuth error code."""
        grant = self._grants.get(code)
        if grant is None or grant.expires_at <= time.time() or grant.client_id != client_id:
            return "invalid_grant"
        if grant.redeemed:
            # A code seen twice was stolen or replayed: what it gave is withdrawn.
            for token in grant.tokens:
                self._tokens.pop(token, None)
            self._grants.pop(code, None)
            return "invalid_grant"
        if grant.redirect_uri != redirect_uri or not secrets.compare_digest(
            s256(verifier).encode(), grant.code_challenge.encode()
        ):
            return "invalid_grant"
        grant.redeemed = True
        return grant

    def issue_tokens(self, grant: Grant) -> dict[str, Any]:
        now = int(time.time())
        access = secrets.token_urlsafe(32)
        self._tokens[access] = AccessToken(
            grant.professional, grant.client_id, grant.scope, now, now + TOKEN_TTL
        )
        grant.tokens.append(access)
        return {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": TOKEN_TTL,
            "scope": grant.scope,
            "id_token": self.id_token(self.id_token_claims(grant, now)),
        }

    def id_token_claims(self, grant: Grant, now: int) -> dict[str, Any]:
        return {
            "iss": self.issuer,
            "sub": grant.professional.sub,
            "aud": grant.client_id,
            "azp": grant.client_id,
            "iat": now,
            "exp": now + TOKEN_TTL,
            "auth_time": grant.auth_time,
            "nonce": grant.nonce,
            "acr": grant.acr,
            "preferred_username": grant.professional.national_id,
        }

    def id_token(self, claims: dict[str, Any]) -> str:
        return jwt.encode({"alg": "RS256", "kid": self.kid, "typ": "JWT"}, claims, self.key)

    def access_token(self, token: str) -> AccessToken | None:
        found = self._tokens.get(token)
        return found if found is not None and found.expires_at > time.time() else None

    # ---- what the endpoints publish

    def jwks(self) -> dict[str, Any]:
        public = self.key.as_dict(private=False)
        return {"keys": [{**public, "kid": self.kid, "use": "sig", "alg": "RS256"}]}

    def userinfo(self, token: AccessToken) -> dict[str, Any]:
        """The PSC userinfo shape (UserInfos/Practice of the ANS VIHF gateway), for one exercise."""
        p = token.professional
        exercise: dict[str, Any] = {
            "codeProfession": p.profession,
            "codeCategorieProfessionnelle": "C",  # civil
            "codeCiviliteDexercice": p.civility,
            "nomDexercice": p.family_name,
            "prenomDexercice": p.given_name,
            "codeTypeSavoirFaire": "S" if p.savoir_faire else "",
            "codeSavoirFaire": p.savoir_faire or "",
            "activities": [],
        }
        return {
            "sub": p.sub,
            "SubjectNameID": p.national_id,
            "preferred_username": p.national_id,
            "given_name": p.given_name,
            "family_name": p.family_name,
            "email_verified": False,
            "otherIds": [{"identifiant": p.rpps, "origine": "RPPS", "qualite": 1}],
            "SubjectRefPro": {"codeCivilite": p.civility, "exercices": [exercise]},
        }

    def introspect(self, token: str) -> dict[str, Any]:
        found = self.access_token(token)
        if found is None:
            return {"active": False}
        return {
            "active": True,
            "iss": self.issuer,
            "sub": found.professional.sub,
            "client_id": found.client_id,
            "scope": found.scope,
            "token_type": "Bearer",
            "iat": found.issued_at,
            "exp": found.expires_at,
            "preferred_username": found.professional.national_id,
        }

    def metadata(self) -> dict[str, Any]:
        base = f"{self.issuer}/protocol/openid-connect"
        return {
            "issuer": self.issuer,
            "authorization_endpoint": f"{base}/auth",
            "token_endpoint": f"{base}/token",
            "userinfo_endpoint": f"{base}/userinfo",
            "introspection_endpoint": f"{base}/token/introspect",
            "jwks_uri": f"{base}/certs",
            "response_types_supported": ["code"],
            "grant_types_supported": ["authorization_code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "introspection_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "acr_values_supported": [ACR_EIDAS1],
            "scopes_supported": ["openid", "scope_all"],
            "claims_supported": [
                "sub",
                "iss",
                "aud",
                "acr",
                "nonce",
                "SubjectNameID",
                "SubjectRefPro",
                "given_name",
                "family_name",
                "preferred_username",
                "otherIds",
            ],
            "authorization_response_iss_parameter_supported": True,
        }

    def endpoints(self) -> dict[str, Any]:
        """The ``psc`` entry of /sandbox/endpoints (sandbox only: it carries passwords and the client secret)."""
        return {
            "issuer": self.issuer,
            "discovery": f"{self.issuer}/.well-known/openid-configuration",
            "introspection": self.metadata()["introspection_endpoint"],
            "client_id": self.client_id,
            "client_secret": self.client_secret,
            "users": [
                {
                    "login": p.login,
                    "password": p.password,
                    "rpps": p.rpps,
                    "profession": p.profession,
                    "name": f"{p.given_name} {p.family_name}",
                }
                for p in self.professionals.values()
            ],
        }
