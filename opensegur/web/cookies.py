"""The session cookie, set the same way by every way in (local login, second factor, Pro Santé Connect, SSO)."""

from __future__ import annotations

from fastapi.responses import Response

from opensegur.web.deps import SESSION_COOKIE, WebRuntime


def set_session_cookie(response: Response, runtime: WebRuntime, secret: str) -> None:
    """HttpOnly (no script reads it), SameSite=Lax (not sent on cross-site posts), Secure behind HTTPS."""
    base = runtime.settings.public_base_url or ""
    response.set_cookie(
        SESSION_COOKIE,
        secret,
        httponly=True,
        secure=base.startswith("https://"),
        samesite="lax",
        path="/",
        max_age=runtime.settings.session_absolute_s,
    )
