"""The pages hold under the Content-Security-Policy and carry the CSRF field: checked on the template sources,
so that a new template cannot bring back an inline style, an inline script or an unprotected form."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from opensegur.web import assets

TEMPLATES = sorted((Path(assets.__file__).with_name("templates")).glob("*.html"))


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda p: p.name)
def test_no_inline_style_or_script(template: Path) -> None:
    source = template.read_text()
    assert not re.search(r"\sstyle\s*=", source), "attribut style= : utiliser une classe de opensegur.css"
    assert "<style" not in source
    for attributes in re.findall(r"<script\b([^>]*)>", source):
        assert "src=" in attributes, "script en ligne : le mettre dans web/static"
    assert not re.search(r"\son[a-z]+\s*=", source), "gestionnaire d'événement en ligne"


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda p: p.name)
def test_every_post_form_has_the_csrf_field(template: Path) -> None:
    source = template.read_text()
    for form in re.findall(r"<form\b[^>]*method=\"post\"[^>]*>(.*?)</form>", source, re.S | re.I):
        assert "{{ csrf_field() }}" in form


def test_style_sheet_is_served_and_nothing_outside_static() -> None:
    app = FastAPI()
    app.include_router(assets.router)
    client = TestClient(app)
    css = client.get("/static/opensegur.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert ".status-QUAL" in css.text
    for name in ("absent.css", "..", "..%2Fassets.py", "%2E%2E%2Fassets.py"):
        assert client.get(f"/static/{name}").status_code == 404
