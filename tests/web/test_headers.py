"""Security headers on every answer, HTML not cached, a route's own CSP kept."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.testclient import TestClient

from opensegur.web.headers import CONTENT_SECURITY_POLICY, SecurityHeadersMiddleware
from opensegur.web.safety import attachment_headers


def client(*, hsts: bool) -> TestClient:
    app = FastAPI()

    @app.get("/page", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        return HTMLResponse("<p>patient</p>")

    @app.get("/api")
    async def api() -> JSONResponse:
        return JSONResponse({"ok": True})

    @app.get("/download")
    async def download() -> Response:
        return Response(b"<ClinicalDocument/>", headers=attachment_headers("cr.xml", "text/xml"))

    app.add_middleware(SecurityHeadersMiddleware, hsts=hsts)
    return TestClient(app)


def test_every_answer_carries_the_headers() -> None:
    c = client(hsts=False)
    for path in ("/page", "/api", "/absent"):
        headers = c.get(path).headers
        assert headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert "frame-ancestors 'none'" in CONTENT_SECURITY_POLICY
        assert "'unsafe-inline'" not in CONTENT_SECURITY_POLICY
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["referrer-policy"] == "no-referrer"
        assert headers["x-frame-options"] == "DENY"
        assert headers["cross-origin-opener-policy"] == "same-origin"
        assert headers["permissions-policy"] == "camera=(), microphone=(), geolocation=()"
        assert "strict-transport-security" not in headers


def test_html_is_not_stored_json_is_left_alone() -> None:
    c = client(hsts=False)
    assert c.get("/page").headers["cache-control"] == "no-store"
    assert "cache-control" not in c.get("/api").headers


def test_hsts_only_when_asked() -> None:
    assert client(hsts=True).get("/api").headers["strict-transport-security"].startswith("max-age=")


def test_a_download_keeps_its_sandbox_policy() -> None:
    headers = client(hsts=False).get("/download").headers
    assert headers["content-security-policy"] == "sandbox; default-src 'none'"
    assert headers["content-disposition"].startswith("attachment;")
    assert headers.get_list("x-content-type-options") == ["nosniff"]
