"""Redirect targets and document download headers: hostile values never leave the site or run in it."""

from __future__ import annotations

import pytest

from opensegur.web.safety import DOCUMENT_CSP, attachment_headers, local_redirect_target

DEFAULT = "/identites"


@pytest.mark.parametrize(
    "value",
    [
        "/%09/evil.example",
        "/%0a/evil.example",
        "/%250909/evil.example",
        "/\t/evil.example",
        "//evil",
        "/%2F/evil",
        "/\\evil",
        "/%5Cevil",
        "/ok\\..\\evil",
        "https://evil",
        "javascript:alert(1)",
        "evil",
        " /ok",
        "/ok\r\nSet-Cookie: x=1",
        "",
        None,
    ],
)
def test_hostile_targets_fall_back_to_default(value: str | None) -> None:
    assert local_redirect_target(value, DEFAULT) == DEFAULT


@pytest.mark.parametrize(
    "value", ["/ok?x=1", "/", "/identites/3", "/documents?q=dupont%20jean&page=2", "/annuaire#resultats"]
)
def test_local_paths_are_kept(value: str) -> None:
    assert local_redirect_target(value, DEFAULT) == value


def test_attachment_headers_for_a_cda() -> None:
    headers = attachment_headers("CR radio été.xml", "text/xml")
    assert headers["Content-Disposition"] == (
        "attachment; filename=\"CR radio _t_.xml\"; filename*=UTF-8''CR%20radio%20%C3%A9t%C3%A9.xml"
    )
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Content-Security-Policy"] == DOCUMENT_CSP == "sandbox; default-src 'none'"
    assert headers["Content-Type"] == "text/xml"


def test_attachment_headers_neutralise_hostile_names() -> None:
    headers = attachment_headers('a";\r\nX-Evil: 1.pdf', "application/pdf")
    disposition = headers["Content-Disposition"]
    assert "\r" not in disposition and "\n" not in disposition
    assert disposition.startswith("attachment; filename=\"a__X-Evil: 1.pdf\"; filename*=UTF-8''")


def test_attachment_headers_refuse_an_injected_media_type() -> None:
    with pytest.raises(ValueError):
        attachment_headers("a.pdf", "application/pdf\r\nSet-Cookie: x=1")
