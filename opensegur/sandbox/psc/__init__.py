"""A sandbox Pro Santé Connect: OpenID Connect authorization code + PKCE at eidas1, PSC-shaped userinfo, token
introspection (RFC 7662) and JWKS, for fictitious professionals."""

from opensegur.sandbox.psc.provider import SANDBOX_PROFESSIONALS, Professional, PscSandbox
from opensegur.sandbox.psc.routes import create_psc_router

__all__ = ["SANDBOX_PROFESSIONALS", "Professional", "PscSandbox", "create_psc_router"]
