"""The PSC tokens kept for the sessions opened through PSC: only while valid, forgotten at logout, bounded."""

from __future__ import annotations

import pytest

from opensegur.security import psc_delegation
from opensegur.security.psc_delegation import PscDelegation


def test_a_token_is_given_only_while_it_stays_valid_long_enough() -> None:
    vault = PscDelegation()
    vault.keep(1, "jeton-1", expires_in=600)
    vault.keep(2, "jeton-2", expires_in=20)
    assert vault.token(1) == "jeton-1"
    assert vault.token(2) is None  # expires within the 30 s a retrieval needs to start
    assert vault.token(2, valid_for=5) == "jeton-2"
    assert vault.token(None) is None and vault.token(3) is None
    vault.forget(1)
    assert vault.token(1) is None


def test_memory_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(psc_delegation, "MAX_SESSIONS", 3)
    vault = PscDelegation()
    for n in range(5):
        vault.keep(n, f"jeton-{n}", expires_in=600)
    assert [vault.token(n) for n in range(5)] == [None, None, "jeton-2", "jeton-3", "jeton-4"]
