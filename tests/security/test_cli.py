"""``opensegur token``, ``opensegur account`` and ``opensegur audit`` on a fresh data directory."""

from __future__ import annotations

import io
import sqlite3
from pathlib import Path

import pyotp
import pytest

from opensegur.cli import main
from opensegur.security import accounts, sessions, tokens
from opensegur.security.errors import LoginRefused
from opensegur.security.matrix import Assignment, Scope
from opensegur.store.db import Database
from opensegur.store.models import WebSession

from .conftest import PASSWORD


def run(capsys: pytest.CaptureFixture[str], data_dir: Path, *argv: str) -> tuple[int, str, str]:
    code = main([*argv, "--data-dir", str(data_dir)])
    out, err = capsys.readouterr()
    return code, out, err


def database(data_dir: Path) -> Database:
    return Database(f"sqlite:///{(data_dir / 'opensegur.db').resolve()}")


def test_token_create_list_revoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(
        capsys, tmp_path, "token", "create", "--name", "dpi", "--role", "integration", "--expires", "90"
    )
    assert code == 0 and "ne sera plus affiché" in err
    secret = out.strip()
    assert secret.startswith("osg_") and "\n" not in secret
    db = database(tmp_path)
    with db.session() as s:
        token = tokens.resolve_token(s, secret)
        assert token is not None and token.role == "integration" and token.expires_at is not None
    code, out, _ = run(capsys, tmp_path, "token", "list")
    assert code == 0 and "Dernier usage" in out and "dpi" in out and secret not in out
    code, out, _ = run(capsys, tmp_path, "token", "revoke", "dpi")
    assert code == 0 and out.strip() == "Jeton « dpi » révoqué."
    with db.session() as s:
        assert tokens.resolve_token(s, secret) is None
    db.dispose()
    line = next(li for li in run(capsys, tmp_path, "token", "list")[1].splitlines() if li.startswith("dpi"))
    assert line.count("20") >= 4  # created, expires, last use, revoked: all dated
    code, _, err = run(capsys, tmp_path, "token", "revoke", "nope")
    assert code == 1 and "Aucun jeton nommé « nope »" in err
    code, _, err = run(
        capsys, tmp_path, "token", "create", "--name", "x", "--role", "r", "--scope", "unit:42"
    )
    assert code == 1 and "Périmètre" in err


def test_account_create_with_totp_and_deactivate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
    code, out, _ = run(
        capsys, tmp_path, "account", "create", "--login", "Dr.Martin", "--name", "Claire Martin",
        "--role", "medecin", "--scope", "unit:750000001/UF42", "--rpps", "10003456789", "--totp",
    )  # fmt: skip
    assert code == 0, out
    secret = next(li.split(": ", 1)[1] for li in out.splitlines() if li.startswith("Secret TOTP"))
    assert "otpauth://totp/OpenS%C3%A9gur:dr.martin?secret=" + secret in out
    recovery = [li.strip() for li in out.splitlines() if li.startswith("  ")]
    assert len(recovery) == 10
    db = database(tmp_path)
    with db.session() as s:
        account = accounts.authenticate_password(s, "dr.martin", PASSWORD, "10.0.0.1")
        assert accounts.verify_second_factor(s, account, pyotp.TOTP(secret).now()) == "totp"
        assert accounts.verify_second_factor(s, account, recovery[0]) == "recovery"
    db.dispose()
    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
    code, _, err = run(
        capsys,
        tmp_path,
        "account",
        "create",
        "--login",
        "dr.martin",
        "--name",
        "X",
        "--role",
        "r",
        "--scope",
        "ght",
    )
    assert code == 1 and "déjà pris" in err
    code, out, _ = run(capsys, tmp_path, "account", "deactivate", "DR.MARTIN")
    assert code == 0 and "désactivé" in out
    with pytest.raises(LoginRefused), db.session() as s:
        accounts.authenticate_password(s, "dr.martin", PASSWORD, None)
    code, _, err = run(capsys, tmp_path, "account", "deactivate", "ghost")
    assert code == 1 and "Aucun compte" in err


def test_account_create_refuses_a_short_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    code, _, err = run(
        capsys, tmp_path, "account", "create", "--login", "a", "--name", "A", "--role", "r", "--scope", "ght"
    )
    assert code == 1 and "trop court" in err


def test_audit_verify_and_anchor(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("a", "b", "c"):
        run(capsys, tmp_path, "token", "create", "--name", name, "--role", "integration")
    code, out, _ = run(capsys, tmp_path, "audit", "verify")
    assert code == 0 and out.strip() == (
        "Trace d'audit intacte : 3 entrée(s) scellée(s), 0 en attente de scellement, 0 ancre(s) vérifiée(s)."
    )
    code, out, _ = run(capsys, tmp_path, "audit", "anchor")
    assert code == 0 and "maillon n° 3" in out
    assert len((tmp_path / "audit-anchors.jsonl").read_text().splitlines()) == 1
    code, out, _ = run(capsys, tmp_path, "audit", "verify")
    assert code == 0 and "2 ancre(s) vérifiée(s)" in out
    conn = sqlite3.connect(tmp_path / "opensegur.db")
    conn.execute("DROP TRIGGER audit_event_no_update")
    conn.execute("UPDATE audit_event SET actor = 'personne' WHERE id = 2")
    conn.commit()
    conn.close()
    code, out, err = run(capsys, tmp_path, "audit", "verify")
    assert code == 1 and out == ""
    assert "ALTÉRÉE — premier maillon rompu : maillon n° 2, entrée n° 2 : entrée modifiée" in err


def test_account_password_gives_an_hr_arrival_its_first_password_and_second_factor(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An account the HR feed created has no password; the operator gives one (and a TOTP), ending any session."""
    db = database(tmp_path)
    db.migrate()
    with db.session() as s:
        account, _ = accounts.create_account(
            s, "m123456", "Léa ARRIVANTE", [Assignment("ide", Scope("ght"))], None, source="hr", by="rh"
        )
        _, before = sessions.open_session(s, account, "sso", False, None, None)
        before_id = before.id
    with pytest.raises(LoginRefused), db.session() as s:
        accounts.authenticate_password(s, "m123456", PASSWORD, None)  # no password yet
    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
    code, out, _ = run(capsys, tmp_path, "account", "password", "M123456", "--totp")
    assert code == 0 and "sessions sont fermées" in out
    secret = next(li.split(": ", 1)[1] for li in out.splitlines() if li.startswith("Secret TOTP"))
    with db.session() as s:
        found = accounts.authenticate_password(s, "m123456", PASSWORD, None)
        assert accounts.verify_second_factor(s, found, pyotp.TOTP(secret).now()) == "totp"
        assert s.get_one(WebSession, before_id).revoked_at is not None
    monkeypatch.setattr("sys.stdin", io.StringIO("court\n"))
    code, _, err = run(capsys, tmp_path, "account", "password", "m123456")
    assert code == 1 and "trop court" in err
    db.dispose()
