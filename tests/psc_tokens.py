"""An access token of the sandbox Pro Santé Connect, obtained as a DRIMbox consumer would: the authorization code
flow with PKCE, the professional's e-CPS login on the sandbox's page, the code redeemed by the client."""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from html import unescape
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

from opensegur.sandbox.psc.provider import SANDBOX_PROFESSIONALS

REDIRECT = "http://127.0.0.1:9/retour"  # a loopback address the sandbox accepts; never called


async def psc_access_token(psc: dict[str, Any], login: str = "pierre.reault") -> str:
    """``psc``: the ``psc`` entry of the sandbox's endpoints (issuer, client id and secret)."""
    issuer = psc["issuer"]
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    params = {
        "response_type": "code",
        "client_id": psc["client_id"],
        "redirect_uri": REDIRECT,
        "scope": "openid scope_all",
        "state": "s",
        "nonce": "n",
        "acr_values": "eidas1",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    async with httpx.AsyncClient(timeout=10) as http:
        form = await http.get(f"{issuer}/protocol/openid-connect/auth", params=params)
        form.raise_for_status()
        hidden = {
            unescape(m.group(1)): unescape(m.group(2))
            for m in re.finditer(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', form.text)
        }
        password = next(p.password for p in SANDBOX_PROFESSIONALS if p.login == login)
        answer = await http.post(
            f"{issuer}/protocol/openid-connect/auth", data=hidden | {"login": login, "password": password}
        )
        code = parse_qs(urlsplit(answer.headers["location"]).query)["code"][0]
        tokens = await http.post(
            f"{issuer}/protocol/openid-connect/token",
            data={
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": REDIRECT,
                "code_verifier": verifier,
            },
            auth=(psc["client_id"], psc["client_secret"]),
        )
        tokens.raise_for_status()
        return str(tokens.json()["access_token"])
