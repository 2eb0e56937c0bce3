"""`/docs` works offline: the page references only local assets, which are served, and has no inline script."""

from __future__ import annotations

import re

from fastapi import FastAPI
from fastapi.testclient import TestClient

from opensegur.web import apidocs
from opensegur.web.headers import SecurityHeadersMiddleware


def client() -> TestClient:
    app = FastAPI(docs_url=None, redoc_url=None)
    app.include_router(apidocs.router)
    app.add_middleware(SecurityHeadersMiddleware, hsts=False)
    return TestClient(app)


def test_docs_page_uses_only_local_assets_and_no_inline_script() -> None:
    c = client()
    page = c.get("/docs")
    assert page.status_code == 200
    html = page.text
    assert "http://" not in html and "https://" not in html and "//cdn" not in html
    assert "style=" not in html
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", html, re.S)
    assert scripts and all('src="/docs-assets/' in attrs and not body.strip() for attrs, body in scripts)
    references = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert references
    for url in references:
        asset = c.get(url)
        assert asset.status_code == 200, url
        assert asset.content
    assert page.headers["content-security-policy"].startswith("default-src 'self'")


def test_assets_have_their_types_and_nothing_else_is_served() -> None:
    c = client()
    assert c.get("/docs-assets/swagger-ui-bundle.js").headers["content-type"].startswith("text/javascript")
    assert c.get("/docs-assets/swagger-ui.css").headers["content-type"].startswith("text/css")
    assert b"SwaggerUIBundle" in c.get("/docs-assets/apidocs.js").content
    for name in ("index.html", "swagger-ui-bundle.js.map", "..%2F__init__.py"):
        assert c.get(f"/docs-assets/{name}").status_code == 404
    assert c.get("/openapi.json").status_code == 200
