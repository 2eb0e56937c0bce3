"""A real Dovecot IMAP server for tests: private config in a temp dir, loopback only, started and stopped per use.

Usage from any test file::

    from tests.transport.dovecot import DovecotServer, dovecot_server  # noqa: F401 (fixture)

    def test_x(dovecot_server: DovecotServer) -> None:
        dovecot_server.add_mailbox("bal@ch.test", "secret")
        uid = dovecot_server.deliver("bal@ch.test", raw_message)

Runs as the current user. As root (CI containers) Dovecot refuses to give mail access to uid 0 and wants its
internal and login users to be unprivileged, so the mail files then belong to ``nobody`` and the internal users
are the package's ``dovecot`` / ``dovenull`` when they exist. Messages are delivered with IMAP APPEND, the way
another client would, which also wakes IDLE sessions through Dovecot's own change notification.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from imapclient import IMAPClient

from opensegur.security.pki import TestPki
from tests.ports import free_port

DOVECOT = Path(os.environ.get("OPENSEGUR_DOVECOT", "/usr/sbin/dovecot"))
_START_TIMEOUT = 15.0


def require_dovecot() -> None:
    """Skip (fail in CI, where ``.ci/run`` installs it) when the Dovecot binary is missing."""
    if DOVECOT.is_file() and os.access(DOVECOT, os.X_OK):
        return
    if os.environ.get("CI"):
        pytest.fail(f"{DOVECOT} must be installed in CI (.ci/run installs dovecot-imapd)")
    pytest.skip(f"Dovecot not installed ({DOVECOT} missing; Debian package dovecot-imapd)")


@dataclass(frozen=True)
class _Identity:
    internal_user: str
    internal_group: str
    login_user: str
    mail_uid: int
    mail_gid: int


def _identity() -> _Identity:
    uid = os.geteuid()
    if uid != 0:
        me = pwd.getpwuid(uid)
        group = grp.getgrgid(me.pw_gid).gr_name
        return _Identity(me.pw_name, group, me.pw_name, me.pw_uid, me.pw_gid)

    def user(name: str, fallback: str) -> pwd.struct_passwd:
        try:
            return pwd.getpwnam(name)
        except KeyError:
            return pwd.getpwnam(fallback)

    internal = user("dovecot", "nobody")
    login = user("dovenull", internal.pw_name)
    mail = pwd.getpwnam("nobody")
    return _Identity(
        internal.pw_name, grp.getgrgid(internal.pw_gid).gr_name, login.pw_name, mail.pw_uid, mail.pw_gid
    )


@dataclass
class DovecotServer:
    """One Dovecot instance. ``port`` speaks plain IMAP (STARTTLS offered when ``tls`` was given), ``tls_port``
    implicit TLS when ``tls`` was given."""

    directory: Path
    tls: TestPki | None = None
    capabilities: str | None = None  # replaces the post-login CAPABILITY (to play a server without IDLE/MOVE)
    host: str = "127.0.0.1"
    port: int = 0
    tls_port: int = 0
    passwords: dict[str, str] = field(default_factory=dict)
    _process: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> str:
        paths = (self.directory / "dovecot.log", self.directory / "dovecot.stderr")
        return "".join(p.read_text("utf-8", "replace") for p in paths if p.exists())

    def _config(self, ident: _Identity) -> str:
        d = self.directory
        tls = (
            f"ssl = yes\nssl_cert = <{self.tls.server_cert}\nssl_key = <{self.tls.server_key}\n"
            if self.tls
            else "ssl = no\n"
        )
        imaps_port = self.tls_port if self.tls else 0
        capability = f"imap_capability = {self.capabilities}\n" if self.capabilities else ""
        return f"""\
base_dir = {d}/run
state_dir = {d}/state
log_path = {d}/dovecot.log
protocols = imap
listen = {self.host}
{tls}disable_plaintext_auth = no
auth_mechanisms = plain login
default_internal_user = {ident.internal_user}
default_internal_group = {ident.internal_group}
default_login_user = {ident.login_user}
first_valid_uid = 1
first_valid_gid = 1
mail_location = maildir:~/Maildir
mailbox_idle_check_interval = 1 secs
{capability}passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {d}/passwd
}}
userdb {{
  driver = static
  args = uid={ident.mail_uid} gid={ident.mail_gid} home={d}/home/%u
}}
namespace inbox {{
  inbox = yes
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    address = {self.host}
    port = {self.port}
  }}
  inet_listener imaps {{
    address = {self.host}
    port = {imaps_port}
  }}
}}
service anvil {{
  chroot =
}}
"""

    def start(self) -> None:
        require_dovecot()
        ident = _identity()
        self.directory.chmod(0o755)  # the unprivileged Dovecot processes must reach the passwd file and homes
        home = self.directory / "home"
        home.mkdir(exist_ok=True)
        if os.geteuid() == 0:
            os.chown(home, ident.mail_uid, ident.mail_gid)
        self._write_passwd()
        for _attempt in range(3):  # a port picked free may be taken by someone else before Dovecot binds it
            self.port = free_port()
            self.tls_port = free_port() if self.tls else 0
            (self.directory / "dovecot.conf").write_text(self._config(ident))
            with (self.directory / "dovecot.stderr").open("ab") as output:
                self._process = subprocess.Popen(
                    [str(DOVECOT), "-F", "-c", str(self.directory / "dovecot.conf")],
                    stdout=output,
                    stderr=subprocess.STDOUT,
                )
            if self._wait_ready():
                return
            self._terminate()
        raise RuntimeError(f"Dovecot did not start:\n{self.log}")

    def _wait_ready(self) -> bool:
        assert self._process is not None
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                return False
            try:
                with socket.create_connection((self.host, self.port), timeout=1) as s:
                    if s.recv(64).startswith(b"* OK"):
                        return True
            except OSError:
                time.sleep(0.05)
        return False

    def _terminate(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()  # the master stops its children on SIGTERM
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)

    def stop(self) -> None:
        self._terminate()
        shutil.rmtree(self.directory, ignore_errors=True)

    def _write_passwd(self) -> None:
        lines = "".join(f"{user}:{{PLAIN}}{password}\n" for user, password in self.passwords.items())
        path = self.directory / "passwd"
        path.write_text(lines)
        path.chmod(0o644)  # test passwords only; the auth process runs as the internal user

    # ------------------------------------------------------------------------------------------- mailboxes

    def add_mailbox(self, address: str, password: str) -> None:
        """Create (or re-password) an account; Dovecot re-reads the passwd file when it changes."""
        self.passwords[address] = password
        self._write_passwd()
        # passwd-file reloads on a changed mtime; make sure two writes in the same second still differ.
        stamp = time.time() + len(self.passwords)
        os.utime(self.directory / "passwd", (stamp, stamp))

    def client(self, address: str) -> IMAPClient:
        """A logged-in plain IMAP client for checks from the test side (caller logs out)."""
        client = IMAPClient(self.host, self.port, ssl=False, timeout=10)
        client.login(address, self.passwords[address])
        return client

    def deliver(self, address: str, raw: bytes, *, folder: str = "INBOX", flags: Sequence[bytes] = ()) -> int:
        """Append a message as another client would; returns its UID (UIDPLUS)."""
        client = self.client(address)
        try:
            reply = client.append(folder, raw, flags=tuple(flags))
        finally:
            client.logout()
        # "[APPENDUID <uidvalidity> <uid>] Append completed."
        text = reply.decode() if isinstance(reply, bytes) else str(reply)
        return int(text.split("APPENDUID", 1)[1].split("]", 1)[0].split()[1])

    def folder_uids(self, address: str, folder: str) -> list[int]:
        client = self.client(address)
        try:
            if not client.folder_exists(folder):
                return []
            client.select_folder(folder, readonly=True)
            return sorted(client.search(["ALL"]))
        finally:
            client.logout()

    def flags(self, address: str, folder: str = "INBOX") -> dict[int, tuple[bytes, ...]]:
        client = self.client(address)
        try:
            client.select_folder(folder, readonly=True)
            return {uid: tuple(f) for uid, f in client.get_flags(client.search(["ALL"])).items()}
        finally:
            client.logout()


@contextlib.contextmanager
def running_dovecot(tls: TestPki | None = None, capabilities: str | None = None) -> Iterator[DovecotServer]:
    # Not pytest's tmp_path: it is private to the test user (0700) and Dovecot's unprivileged processes must
    # traverse the directory.
    server = DovecotServer(
        Path(tempfile.mkdtemp(prefix="opensegur-dovecot-")), tls=tls, capabilities=capabilities
    )
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def dovecot_server() -> Iterator[DovecotServer]:
    with running_dovecot() as server:
        yield server
