"""One-time messages after a form post (« Document retenu… »), carried by a cookie signed with the session's
secret: a page never prints text taken from its query string, so a crafted link cannot put words in its mouth."""

from __future__ import annotations

import base64
import hashlib
import hmac

from fastapi import Request
from fastapi.responses import RedirectResponse, Response

from opensegur.security.actor import Actor

FLASH_COOKIE = "opensegur_flash"


def _sign(key: str, text: str) -> str:
    return hmac.new(key.encode(), text.encode(), hashlib.sha256).hexdigest()[:32]


def redirect_with_message(url: str, message: str, actor: Actor) -> RedirectResponse:
    """303 to a local path, with ``message`` shown once by the next page of the same session."""
    response = RedirectResponse(url, status_code=303)
    key = actor.csrf_token
    if key:
        text = base64.urlsafe_b64encode(message.encode()).decode()
        response.set_cookie(
            FLASH_COOKIE, f"{text}.{_sign(key, text)}", httponly=True, samesite="strict", max_age=60, path="/"
        )
    return response


def take_message(request: Request, response: Response | None = None) -> str:
    """The message the previous post left for this session, if its signature holds (and forget it)."""
    raw = request.cookies.get(FLASH_COOKIE)
    actor = getattr(request.state, "actor", None)
    if not raw or actor is None or not actor.csrf_token:
        return ""
    if response is not None:
        response.delete_cookie(FLASH_COOKIE, path="/")
    text, _, signature = raw.partition(".")
    if not hmac.compare_digest(signature, _sign(actor.csrf_token, text)):
        return ""
    try:
        return base64.urlsafe_b64decode(text.encode()).decode()[:500]
    except ValueError:
        return ""
