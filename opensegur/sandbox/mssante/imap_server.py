"""IMAP side of the MSSanté sandbox: a minimal IMAP4rev1 server on the Maildir store (``maildir_store``).

No maintained Python IMAP *server* library exists, so it is written by hand (RFC 3501 subset, plus IDLE 2177,
LITERAL+ 7888, NAMESPACE 2342, UIDPLUS 4315, MOVE 6851, UNSELECT 3691). It serves what mail clients and
``imapclient`` use: LOGIN / AUTHENTICATE PLAIN, STARTTLS, LIST/LSUB, NAMESPACE, SELECT/EXAMINE, STATUS, CREATE,
APPEND, SEARCH, FETCH, STORE, COPY, MOVE, EXPUNGE, CLOSE, IDLE. RENAME, DELETE, BODYSTRUCTURE and MIME part
sections (``BODY[1]``) are not served (``BAD``); keywords are accepted but not kept (no ``\\*`` in PERMANENTFLAGS).
Every hostile input (overlong line, huge literal, garbage) gets a ``BAD``/``NO`` and never stops the server; the
connection is dropped only when resynchronising is impossible (a too large non-synchronising literal) or the client
keeps sending errors.

The protocol's grammar (tokenizer, quoting, sequence sets, dates, envelope) is in ``imap_syntax``; this module
holds the connection: reading commands and literals, the session's state, and the commands themselves.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import re
import ssl
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

from opensegur.errors import OpenSegurError
from opensegur.sandbox.mssante.imap_syntax import (
    BadCommand,
    SequenceSet,
    Token,
    ascii_text,
    astring,
    envelope,
    header_fields,
    imap_date,
    internal_date_text,
    parse_date_time,
    quote,
    split_message,
    tokenize,
    uid_set_text,
)
from opensegur.sandbox.mssante.maildir_store import (
    DELIMITER,
    FLAG_LETTERS,
    FolderState,
    MaildirStore,
    StoredMessage,
    StoreError,
)

__all__ = ["ImapServer"]

log = logging.getLogger(__name__)

_SYSTEM_FLAGS = "(\\Answered \\Flagged \\Deleted \\Seen \\Draft)"

T = TypeVar("T")


class _No(OpenSegurError):
    def __init__(self, text: str, code: str | None = None) -> None:
        super().__init__(text)
        self.code = code


class _Disconnect(OpenSegurError):
    pass


class _TooLong(OpenSegurError):
    def __init__(self, head: bytes) -> None:
        super().__init__("line too long")
        self.head = head


_APPEND_RE = re.compile(rb"^\S+ +APPEND ", re.IGNORECASE)
_LITERAL_RE = re.compile(rb"\{(\d{1,20})(\+?)\}\r?\n$")
_TAG_RE = re.compile(r"^[!#$&'+,\-./0-9:;<=>?@A-Z\[^_`a-z|}~]{1,64}$")
_FETCH_SECTION_RE = re.compile(
    r"^(BODY(?:\.PEEK)?)\[([A-Z0-9.]*)(?: \(([^()]*)\))?\](?:<(\d{1,10})(?:\.(\d{1,10}))?>)?$"
)


class ImapServer:
    """IMAP4rev1 over asyncio streams, on ``host:port`` (0 = a free port, read :attr:`port` after start)."""

    def __init__(
        self,
        store: MaildirStore,
        authenticate: Callable[[str, str], str | None],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        tls: ssl.SSLContext | None = None,
        max_line: int = 65_536,
        max_literal: int = 65_536,
        max_append: int = 150_000_000,
        idle_timeout_s: float = 1800.0,
    ) -> None:
        self.store = store
        self.authenticate = authenticate
        self.host = host
        self.port = port
        self.tls = tls
        self.max_line = max_line
        self.max_literal = max_literal
        self.max_append = max_append
        self.idle_timeout_s = idle_timeout_s
        self._server: asyncio.Server | None = None
        self._sessions: set[asyncio.Task[None]] = set()
        self._watchers: dict[tuple[str, str], set[asyncio.Event]] = {}

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port, limit=self.max_line)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._sessions):
            task.cancel()
        await asyncio.gather(*self._sessions, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    def notify(self, address: str, folder: str) -> None:
        """A folder changed: wake the sessions idling on it (call from the event loop thread)."""
        for event in self._watchers.get((address, folder), ()):
            event.set()

    def _watch(self, key: tuple[str, str]) -> asyncio.Event:
        event = asyncio.Event()
        self._watchers.setdefault(key, set()).add(event)
        return event

    def _unwatch(self, key: tuple[str, str], event: asyncio.Event) -> None:
        events = self._watchers.get(key)
        if events is not None:
            events.discard(event)
            if not events:
                del self._watchers[key]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._sessions.add(task)
        try:
            await _Session(self, reader, writer).run()
        except (ConnectionError, asyncio.IncompleteReadError, _Disconnect, TimeoutError, ssl.SSLError):
            pass
        except asyncio.CancelledError:
            # Server stopping: end quietly, or start_server's done-callback reports the cancellation as an error.
            pass
        except Exception:
            log.exception("IMAP session crashed")
        finally:
            self._sessions.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


class _Session:
    MAX_ERRORS = 20
    MAX_AUTH_FAILURES = 5

    def __init__(
        self, server: ImapServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.server = server
        self.store = server.store
        self.reader = reader
        self.writer = writer
        self.tls_active = False
        self.user: str | None = None
        self.folder: str | None = None
        self.readonly = False
        self.view: list[int] = []  # UIDs by sequence number - 1
        self.errors = 0
        self.auth_failures = 0
        self.done = False

    # ------------------------------------------------------------------------------------------------- I/O

    async def send(self, *chunks: bytes) -> None:
        self.writer.write(b"".join(chunks))
        await self.writer.drain()

    def capabilities(self) -> str:
        caps = ["IMAP4rev1", "LITERAL+", "IDLE", "NAMESPACE", "UIDPLUS", "MOVE", "UNSELECT"]
        if self.server.tls is not None and not self.tls_active:
            caps += ["STARTTLS", "LOGINDISABLED"]
        elif self.user is None:
            caps.append("AUTH=PLAIN")
        return " ".join(caps)

    async def _read_line(self) -> bytes:
        """One line; raises ``_TooLong`` (after discarding it up to its newline) when it exceeded the limit."""
        try:
            return await asyncio.wait_for(self.reader.readuntil(b"\n"), self.server.idle_timeout_s)
        except asyncio.LimitOverrunError as exc:
            head = (await self.reader.readexactly(exc.consumed))[:70]
        while True:
            try:
                await self.reader.readuntil(b"\n")
                raise _TooLong(head)
            except asyncio.LimitOverrunError as exc:
                await self.reader.readexactly(exc.consumed)

    async def _read_command(self) -> list[bytes] | tuple[str, bytes]:
        """The pieces of one command (text, literal, text…), or (BAD text, start of line) when it was skipped."""
        pieces: list[bytes] = []
        total = 0
        while True:
            try:
                line = await self._read_line()
            except _TooLong as exc:
                return "Ligne trop longue (line too long)", pieces[0] if pieces else exc.head
            total += len(line)
            found = _LITERAL_RE.search(line)
            if found is None:
                pieces.append(line.rstrip(b"\r\n"))
                return pieces
            size, sync = int(found.group(1)), not found.group(2)
            pieces.append(line[: found.start()])
            total += size
            limit = self.server.max_append if _APPEND_RE.match(pieces[0]) else self.server.max_literal
            if size > limit or total > 4 * self.server.max_line + limit:
                if sync:
                    text = f"[TOOBIG] Litteral trop grand, maximum {limit} octets (literal too big)"
                    return text, pieces[0]
                # The client sends the bytes without waiting: no way to resynchronise on what follows.
                await self.send(b"* BYE [TOOBIG] Litteral trop grand (literal too big)\r\n")
                raise _Disconnect
            if sync:
                await self.send(b"+ Pret pour le litteral (ready for literal)\r\n")
            pieces.append(await self.reader.readexactly(size))

    # --------------------------------------------------------------------------------------------- session

    async def run(self) -> None:
        await self.send(
            f"* OK [CAPABILITY {self.capabilities()}] OpenSegur MSSante bac a sable pret\r\n".encode()
        )
        while not self.done:
            command = await self._read_command()
            tag = "*"
            try:
                if isinstance(command, tuple):
                    raise BadCommand(command[0])
                tokens = tokenize(command)
                if not tokens or not isinstance(tokens[0], str) or not _TAG_RE.match(tokens[0]):
                    raise BadCommand("Etiquette invalide (invalid tag)")
                tag = tokens[0]
                if len(tokens) < 2 or not isinstance(tokens[1], str):
                    raise BadCommand("Commande manquante (missing command)")
                text = await self.dispatch(tag, tokens[1].upper(), tokens[2:])
                if text is not None:
                    await self.send(f"{tag} OK {text}\r\n".encode())
            except BadCommand as exc:
                if tag == "*":
                    head = command[1] if isinstance(command, tuple) else command[0][:70]
                    guess = head.split(b" ", 1)[0].decode("latin-1")
                    tag = guess if _TAG_RE.match(guess) else "*"
                await self.send(f"{tag} BAD {exc}\r\n".encode())
                self.errors += 1
                if self.errors >= self.MAX_ERRORS:
                    await self.send(b"* BYE Trop d'erreurs (too many errors)\r\n")
                    return
            except _No as exc:
                code = f"[{exc.code}] " if exc.code else ""
                await self.send(f"{tag} NO {code}{exc}\r\n".encode())
            except StoreError as exc:
                await self.send(f"{tag} NO [{exc.code}] {ascii_text(str(exc))}\r\n".encode())
            except (ConnectionError, asyncio.IncompleteReadError, _Disconnect, TimeoutError, ssl.SSLError):
                raise
            except Exception:
                log.exception("IMAP command failed")
                await self.send(
                    f"{tag} NO [SERVERBUG] Erreur interne du bac a sable (internal error)\r\n".encode()
                )

    async def dispatch(self, tag: str, name: str, args: list[Token]) -> str | None:
        """Run one command; returns the text of the tagged OK (None when already answered)."""
        if name == "CAPABILITY":
            self._no_args(args)
            await self.send(f"* CAPABILITY {self.capabilities()}\r\n".encode())
            return "CAPABILITY termine"
        if name == "NOOP":
            self._no_args(args)
            await self._sync(expunges=True)
            return "NOOP termine"
        if name == "LOGOUT":
            self._no_args(args)
            await self.send(b"* BYE Au revoir (logging out)\r\n")
            self.done = True
            return "LOGOUT termine"
        if self.user is None:
            if name == "STARTTLS":
                await self.starttls(tag, args)
                return None
            if name == "LOGIN":
                return await self.login(args)
            if name == "AUTHENTICATE":
                return await self.authenticate_cmd(args)
            raise BadCommand("Commande inconnue ou invalide avant authentification (LOGIN first)")
        handlers: dict[str, Callable[[str, list[Token]], Awaitable[str]]] = {
            "SELECT": self.select,
            "EXAMINE": self.select,
            "LIST": self.list_cmd,
            "LSUB": self.list_cmd,
            "SUBSCRIBE": self.subscribe,
            "UNSUBSCRIBE": self.subscribe,
            "CREATE": self.create,
            "STATUS": self.status,
            "IDLE": self.idle,
            "APPEND": self.append,
            "NAMESPACE": self.namespace,
        }
        selected: dict[str, Callable[[str, list[Token]], Awaitable[str]]] = {
            "CHECK": self.check,
            "CLOSE": self.close,
            "UNSELECT": self.close,
            "EXPUNGE": self.expunge,
            "SEARCH": self.search,
            "FETCH": self.fetch,
            "STORE": self.store_cmd,
            "COPY": self.copy,
            "MOVE": self.copy,
            "UID": self.uid,
        }
        if name in handlers:
            return await handlers[name](name, args)
        if name in selected:
            if self.folder is None:
                raise BadCommand("Aucun dossier selectionne (SELECT first)")
            return await selected[name](name, args)
        if name in ("LOGIN", "AUTHENTICATE", "STARTTLS"):
            raise BadCommand("Deja authentifie (already authenticated)")
        raise BadCommand("Commande inconnue (unknown command)")

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.to_thread(fn, *args)

    @staticmethod
    def _no_args(args: list[Token]) -> None:
        if args:
            raise BadCommand("Arguments inattendus (unexpected arguments)")

    # ------------------------------------------------------------------------------------ authentication

    async def starttls(self, tag: str, args: list[Token]) -> None:
        self._no_args(args)
        if self.server.tls is None or self.tls_active:
            raise BadCommand("STARTTLS indisponible (not available)")
        await self.send(f"{tag} OK Debut de la negociation TLS (begin TLS)\r\n".encode())
        await self.writer.start_tls(self.server.tls)
        self.tls_active = True

    async def login(self, args: list[Token]) -> str:
        if len(args) != 2:
            raise BadCommand("Syntaxe : LOGIN utilisateur motdepasse (LOGIN user password)")
        return await self._auth(astring(args[0], "Utilisateur"), astring(args[1], "Mot de passe"))

    async def authenticate_cmd(self, args: list[Token]) -> str:
        if not args or not isinstance(args[0], str) or len(args) > 2:
            raise BadCommand("Syntaxe : AUTHENTICATE PLAIN")
        if args[0].upper() != "PLAIN":
            raise _No("Mecanisme non pris en charge, PLAIN seulement (unsupported mechanism)")
        if len(args) == 2:
            response = args[1].encode("latin-1") if isinstance(args[1], str) else bytes(args[1])
        else:
            await self.send(b"+ \r\n")
            try:
                response = (await self._read_line()).strip()
            except _TooLong as exc:
                raise BadCommand("Reponse trop longue (response too long)") from exc
        if response == b"*":
            raise BadCommand("Authentification annulee (cancelled)")
        try:
            decoded = base64.b64decode(response, validate=True).decode("utf-8")
            authzid, user, password = decoded.split("\x00")
        except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
            raise BadCommand("Reponse PLAIN invalide (bad PLAIN response)") from exc
        if authzid and authzid.lower() != user.lower():
            raise _No("Identite d'autorisation refusee (authzid refused)", "AUTHORIZATIONFAILED")
        return await self._auth(user, password)

    async def _auth(self, user: str, password: str) -> str:
        if self.server.tls is not None and not self.tls_active:
            raise _No("STARTTLS d'abord (use STARTTLS first)", "PRIVACYREQUIRED")
        address = self.server.authenticate(user, password)
        if address is None:
            self.auth_failures += 1
            if self.auth_failures >= self.MAX_AUTH_FAILURES:
                await self.send(b"* BYE Trop d'echecs d'authentification (too many failures)\r\n")
                raise _Disconnect
            raise _No("Identifiant ou mot de passe incorrect (invalid credentials)", "AUTHENTICATIONFAILED")
        self.user = address
        return f"[CAPABILITY {self.capabilities()}] Authentifie (logged in)"

    # ------------------------------------------------------------------------------------------- folders

    def _folder_arg(self, tok: Token) -> str:
        return self.store.folder_name(astring(tok, "Nom de dossier"))

    async def select(self, name: str, args: list[Token]) -> str:
        if len(args) != 1:
            raise BadCommand(f"Syntaxe : {name} dossier")
        folder = self._folder_arg(args[0])
        self.folder = None
        self.view = []
        assert self.user is not None
        state = await self._call(self.store.folder, self.user, folder)
        self.folder = folder
        self.readonly = name == "EXAMINE"
        self.view = [m.uid for m in state.messages]
        unseen = next((i + 1 for i, m in enumerate(state.messages) if not m.seen), None)
        lines = [
            f"* FLAGS {_SYSTEM_FLAGS}",
            f"* OK [PERMANENTFLAGS {'()' if self.readonly else _SYSTEM_FLAGS}] Drapeaux permanents",
            f"* {len(self.view)} EXISTS",
            "* 0 RECENT",
        ]
        if unseen is not None:
            lines.append(f"* OK [UNSEEN {unseen}] Premier message non lu")
        lines += [
            f"* OK [UIDVALIDITY {state.uidvalidity}] UIDs valides",
            f"* OK [UIDNEXT {state.uidnext}] UID suivant",
        ]
        await self.send(("\r\n".join(lines) + "\r\n").encode())
        return f"[{'READ-ONLY' if self.readonly else 'READ-WRITE'}] {name} termine"

    async def list_cmd(self, name: str, args: list[Token]) -> str:
        if len(args) != 2:
            raise BadCommand(f"Syntaxe : {name} reference motif")
        reference = astring(args[0], "Reference")
        pattern = reference + astring(args[1], "Motif")
        if not astring(args[1], "Motif"):
            await self.send(f'* {name} (\\Noselect) "/" ""\r\n'.encode())
            return f"{name} termine"
        regex = re.compile(
            "^" + "".join(".*" if c == "*" else "[^/]*" if c == "%" else re.escape(c) for c in pattern) + "$",
            re.IGNORECASE if pattern.upper().startswith("INBOX") else 0,
        )
        assert self.user is not None
        folders = await self._call(self.store.folders, self.user)
        out = []
        for f in folders:
            if regex.match(f):
                children = any(other.startswith(f + DELIMITER) for other in folders)
                attribute = "\\HasChildren" if children else "\\HasNoChildren"
                out.append(f'* {name} ({attribute}) "{DELIMITER}" '.encode() + quote(f))
        if out:
            await self.send(b"\r\n".join(out) + b"\r\n")
        return f"{name} termine"

    async def namespace(self, name: str, args: list[Token]) -> str:
        self._no_args(args)
        await self.send(f'* NAMESPACE (("" "{DELIMITER}")) NIL NIL\r\n'.encode())
        return "NAMESPACE termine"

    async def append(self, name: str, args: list[Token]) -> str:
        if len(args) < 2 or not isinstance(args[-1], bytes) or len(args) > 4:
            raise BadCommand("Syntaxe : APPEND dossier [(drapeaux)] [date] {taille}")
        folder = self._folder_arg(args[0])
        letters = ""
        when: float | None = None
        for option in args[1:-1]:
            if isinstance(option, list):
                letters = _flag_letters(option)
            elif isinstance(option, bytes):
                when = parse_date_time(option.decode("latin-1"))
            else:
                raise BadCommand("Option APPEND invalide (bad APPEND option)")
        message = args[-1]
        if not message.strip():
            raise _No("Message vide (empty message)")
        assert self.user is not None
        try:
            uid = await self._call(self._deliver, folder, message, letters, when)
        except StoreError as exc:
            if exc.code == "NONEXISTENT":
                raise _No("Dossier de destination inexistant (no such folder)", "TRYCREATE") from exc
            raise
        state = await self._call(self.store.folder, self.user, folder)
        return f"[APPENDUID {state.uidvalidity} {uid}] APPEND termine"

    def _deliver(self, folder: str, message: bytes, letters: str, when: float | None) -> int:
        assert self.user is not None
        return self.store.deliver(self.user, message, folder, flags=letters, internal_date=when)

    async def subscribe(self, name: str, args: list[Token]) -> str:
        if len(args) != 1:
            raise BadCommand(f"Syntaxe : {name} dossier")
        assert self.user is not None
        await self._call(self.store.folder, self.user, self._folder_arg(args[0]))
        return f"{name} termine (tous les dossiers sont abonnes)"

    async def create(self, name: str, args: list[Token]) -> str:
        if len(args) != 1:
            raise BadCommand("Syntaxe : CREATE dossier")
        assert self.user is not None
        await self._call(self.store.create_folder, self.user, self._folder_arg(args[0]))
        return "CREATE termine"

    async def status(self, name: str, args: list[Token]) -> str:
        if len(args) != 2 or not isinstance(args[1], list) or not args[1]:
            raise BadCommand("Syntaxe : STATUS dossier (MESSAGES UNSEEN UIDNEXT UIDVALIDITY RECENT)")
        folder = self._folder_arg(args[0])
        assert self.user is not None
        state = await self._call(self.store.folder, self.user, folder)
        values = {
            "MESSAGES": len(state.messages),
            "RECENT": 0,
            "UIDNEXT": state.uidnext,
            "UIDVALIDITY": state.uidvalidity,
            "UNSEEN": sum(1 for m in state.messages if not m.seen),
        }
        items = []
        for item in args[1]:
            key = item.upper() if isinstance(item, str) else ""
            if key not in values:
                raise BadCommand(f"Element STATUS inconnu : {ascii_text(str(item))[:30]}")
            items.append(f"{key} {values[key]}")
        await self.send(b"* STATUS " + quote(folder) + f" ({' '.join(items)})\r\n".encode())
        return "STATUS termine"

    # ------------------------------------------------------------------------------------------ selected

    async def _state(self) -> FolderState:
        assert self.user is not None and self.folder is not None
        return await self._call(self.store.folder, self.user, self.folder)

    async def _sync(self, *, expunges: bool) -> None:
        """Tell the client what changed in the selected folder since its last view (other sessions, SMTP)."""
        if self.folder is None:
            return
        try:
            state = await self._state()
        except StoreError:
            return
        current = [m.uid for m in state.messages]
        present = set(current)
        out: list[bytes] = []
        if expunges:
            for seq in range(len(self.view), 0, -1):
                if self.view[seq - 1] not in present:
                    del self.view[seq - 1]
                    out.append(b"* %d EXPUNGE\r\n" % seq)
        highest = self.view[-1] if self.view else 0
        new = [u for u in current if u > highest]
        if new:
            self.view.extend(new)
            out.append(b"* %d EXISTS\r\n" % len(self.view))
        if out:
            await self.send(*out)

    async def check(self, name: str, args: list[Token]) -> str:
        self._no_args(args)
        await self._sync(expunges=True)
        return "CHECK termine"

    async def close(self, name: str, args: list[Token]) -> str:
        self._no_args(args)
        if name == "CLOSE" and not self.readonly:
            state = await self._state()
            assert self.user is not None and self.folder is not None
            visible = set(self.view)
            doomed = [m.uid for m in state.messages if "T" in m.flags and m.uid in visible]
            await self._call(self.store.remove, self.user, self.folder, doomed)
        self.folder = None
        self.view = []
        return f"{name} termine"

    async def expunge(self, name: str, args: list[Token], only: SequenceSet | None = None) -> str:
        if args:
            raise BadCommand("Syntaxe : EXPUNGE")
        if self.readonly:
            raise _No("Dossier en lecture seule (read-only)", "READ-ONLY")
        state = await self._state()
        visible = set(self.view)
        doomed = [
            m.uid
            for m in state.messages
            if "T" in m.flags and m.uid in visible and (only is None or m.uid in only)
        ]
        assert self.user is not None and self.folder is not None
        await self._call(self.store.remove, self.user, self.folder, doomed)
        await self._send_expunged(doomed)
        await self._sync(expunges=True)
        return "EXPUNGE termine"

    async def _send_expunged(self, uids: Iterable[int]) -> None:
        gone = set(uids)
        out = []
        for seq in range(len(self.view), 0, -1):
            if self.view[seq - 1] in gone:
                del self.view[seq - 1]
                out.append(b"* %d EXPUNGE\r\n" % seq)
        if out:
            await self.send(*out)

    def _targets(self, text: Token, by_uid: bool, state: FolderState) -> list[tuple[int, StoredMessage]]:
        """(sequence number, message) of the set, in sequence order; vanished messages are left out."""
        if not isinstance(text, str):
            raise BadCommand("Ensemble de sequence attendu (sequence set expected)")
        messages = state.by_uid()
        if by_uid:
            star = self.view[-1] if self.view else (state.messages[-1].uid if state.messages else 0)
        else:
            star = len(self.view)
        wanted = SequenceSet(text, star)
        out = []
        for seq, uid in enumerate(self.view, start=1):
            if (uid if by_uid else seq) in wanted and uid in messages:
                out.append((seq, messages[uid]))
        return out

    async def uid(self, name: str, args: list[Token]) -> str:
        if not args or not isinstance(args[0], str):
            raise BadCommand("Syntaxe : UID FETCH|SEARCH|STORE|COPY|MOVE|EXPUNGE ...")
        sub = args[0].upper()
        if sub == "FETCH":
            return await self.fetch(sub, args[1:], by_uid=True)
        if sub == "SEARCH":
            return await self.search(sub, args[1:], by_uid=True)
        if sub == "STORE":
            return await self.store_cmd(sub, args[1:], by_uid=True)
        if sub in ("COPY", "MOVE"):
            return await self.copy(sub, args[1:], by_uid=True)
        if sub == "EXPUNGE":
            if len(args) != 2 or not isinstance(args[1], str):
                raise BadCommand("Syntaxe : UID EXPUNGE ensemble")
            state = await self._state()
            star = state.messages[-1].uid if state.messages else 0
            return await self.expunge("EXPUNGE", [], SequenceSet(args[1], star))
        raise BadCommand("Commande UID inconnue (unknown UID command)")

    # --------------------------------------------------------------------------------------------- SEARCH

    async def search(self, name: str, args: list[Token], by_uid: bool = False) -> str:
        if len(args) >= 2 and isinstance(args[0], str) and args[0].upper() == "CHARSET":
            charset = astring(args[1], "Jeu de caracteres").upper()
            if charset not in ("UTF-8", "US-ASCII"):
                raise _No(
                    "Jeu de caracteres non pris en charge (unsupported charset)",
                    "BADCHARSET (UTF-8 US-ASCII)",
                )
            args = args[2:]
        if not args:
            raise BadCommand("Critere de recherche manquant (missing search key)")
        state = await self._state()
        max_uid = state.messages[-1].uid if state.messages else 0
        keys = list(args)
        predicate = self._search_keys(keys, max_uid)
        cache: dict[int, bytes] = {}

        def raw_of(m: StoredMessage) -> bytes:
            if m.uid not in cache:
                cache[m.uid] = m.path.read_bytes()
            return cache[m.uid]

        def run() -> list[int]:
            found = []
            messages = state.by_uid()
            for seq, uid in enumerate(self.view, start=1):
                m = messages.get(uid)
                if m is not None and predicate(seq, m, raw_of):
                    found.append(uid if by_uid else seq)
            return found

        found = await self._call(run)
        await self.send(("* SEARCH" + "".join(f" {n}" for n in found) + "\r\n").encode())
        if not by_uid:
            return "SEARCH termine"
        await self._sync(expunges=True)
        return "UID SEARCH termine"

    def _search_keys(self, keys: list[Token], max_uid: int) -> _Predicate:
        preds = []
        while keys:
            preds.append(self._search_key(keys, max_uid))
        return lambda seq, m, raw: all(p(seq, m, raw) for p in preds)

    def _search_key(self, keys: list[Token], max_uid: int) -> _Predicate:
        tok = keys.pop(0)
        if isinstance(tok, list):
            if not tok:
                raise BadCommand("Groupe de recherche vide (empty search group)")
            return self._search_keys(list(tok), max_uid)
        if not isinstance(tok, str):
            raise BadCommand("Critere de recherche invalide (bad search key)")
        key = tok.upper()

        def arg() -> Token:
            if not keys:
                raise BadCommand(f"Argument manquant pour {key} (missing argument)")
            return keys.pop(0)

        flag_keys = {"SEEN": "S", "ANSWERED": "R", "FLAGGED": "F", "DELETED": "T", "DRAFT": "D"}
        if key == "ALL":
            return lambda seq, m, raw: True
        if key in flag_keys:
            letter = flag_keys[key]
            return lambda seq, m, raw: letter in m.flags
        if key.startswith("UN") and key[2:] in flag_keys:
            letter = flag_keys[key[2:]]
            return lambda seq, m, raw: letter not in m.flags
        if key in ("NEW", "RECENT"):
            return lambda seq, m, raw: key == "NEW" and not m.seen
        if key == "OLD":
            return lambda seq, m, raw: True
        if key == "NOT":
            inner = self._search_key(keys, max_uid)
            return lambda seq, m, raw: not inner(seq, m, raw)
        if key == "OR":
            left, right = self._search_key(keys, max_uid), self._search_key(keys, max_uid)
            return lambda seq, m, raw: left(seq, m, raw) or right(seq, m, raw)
        if key == "UID":
            uid_set = arg()
            if not isinstance(uid_set, str):
                raise BadCommand("Ensemble d'UID attendu (UID set expected)")
            uids = SequenceSet(uid_set, max_uid)
            return lambda seq, m, raw: m.uid in uids
        if key in ("SINCE", "BEFORE", "ON"):
            day = imap_date(arg())
            if key == "SINCE":
                return lambda seq, m, raw: m.internal_date.date() >= day
            if key == "BEFORE":
                return lambda seq, m, raw: m.internal_date.date() < day
            return lambda seq, m, raw: m.internal_date.date() == day
        if key in ("LARGER", "SMALLER"):
            size_text = astring(arg(), key)
            if not size_text.isdigit():
                raise BadCommand(f"{key} attend un nombre (number expected)")
            size = int(size_text)
            return (
                (lambda seq, m, raw: m.size > size)
                if key == "LARGER"
                else (lambda seq, m, raw: m.size < size)
            )
        if key in ("FROM", "TO", "CC", "BCC", "SUBJECT", "HEADER"):
            field = astring(arg(), "En-tete").upper() if key == "HEADER" else key
            needle = astring(arg(), "Valeur").lower().encode("utf-8")

            def in_header(seq: int, m: StoredMessage, raw: Callable[[StoredMessage], bytes]) -> bool:
                fields = header_fields(split_message(raw(m))[0], {field}, False).lower()
                values = b"".join(line.split(b":", 1)[-1] for line in fields.splitlines())
                return needle in values if needle else bool(fields.strip())

            return in_header
        if key in ("BODY", "TEXT"):
            needle = astring(arg(), "Valeur").lower().encode("utf-8")
            if key == "BODY":
                return lambda seq, m, raw: needle in split_message(raw(m))[1].lower()
            return lambda seq, m, raw: needle in raw(m).lower()
        if key[:1].isdigit() or key[:1] == "*":
            seqs = SequenceSet(key, len(self.view))
            return lambda seq, m, raw: seq in seqs
        raise BadCommand(
            f"Critere de recherche non pris en charge : {ascii_text(key)[:30]} (unsupported search key)"
        )

    # ---------------------------------------------------------------------------------------------- FETCH

    async def fetch(self, name: str, args: list[Token], by_uid: bool = False) -> str:
        if len(args) != 2:
            raise BadCommand("Syntaxe : FETCH ensemble elements")
        items_tok = args[1]
        if isinstance(items_tok, str):
            macro = {
                "ALL": ["FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"],
                "FAST": ["FLAGS", "INTERNALDATE", "RFC822.SIZE"],
                "FULL": ["FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"],
            }
            items: list[str] = macro.get(items_tok.upper(), [items_tok])
        elif isinstance(items_tok, list) and items_tok and all(isinstance(i, str) for i in items_tok):
            items = [str(i) for i in items_tok]
        else:
            raise BadCommand("Elements FETCH invalides (bad fetch items)")
        parsed = [self._fetch_item(i) for i in items]
        if by_uid and not any(p[0] == "UID" for p in parsed):
            parsed.insert(0, ("UID", "UID", None, None, None))
        state = await self._state()
        targets = self._targets(args[0], by_uid, state)
        sets_seen = not self.readonly and any(
            p[0] in ("RFC822", "RFC822.TEXT") or (p[0] == "BODY" and not p[1].startswith("BODY.PEEK"))
            for p in parsed
        )
        assert self.user is not None and self.folder is not None
        if sets_seen:
            unseen = [m.uid for _, m in targets if not m.seen]
            if unseen:
                await self._call(self.store.store_flags, self.user, self.folder, unseen, "S", "+")
                state = await self._state()
                by_uid_now = state.by_uid()
                targets = [(seq, by_uid_now.get(m.uid, m)) for seq, m in targets]
                if not any(p[0] == "FLAGS" for p in parsed):
                    parsed.append(("FLAGS", "FLAGS", None, None, None))
        for seq, m in targets:
            try:
                body = await self._call(self._fetch_response, m, parsed)
            except FileNotFoundError:
                continue  # expunged by another session meanwhile
            await self.send(b"* %d FETCH (" % seq, body, b")\r\n")
        if by_uid:
            await self._sync(expunges=True)
        return f"{'UID ' if by_uid else ''}FETCH termine"

    @staticmethod
    def _fetch_item(item: str) -> tuple[str, str, str | None, int | None, int | None]:
        """(kind, response name, section, partial start, partial length)."""
        upper = item.upper()
        if upper in ("UID", "FLAGS", "RFC822.SIZE", "INTERNALDATE", "RFC822", "RFC822.HEADER", "RFC822.TEXT"):
            return (upper, upper, None, None, None)
        if upper == "ENVELOPE":
            return ("ENVELOPE", "ENVELOPE", None, None, None)
        found = _FETCH_SECTION_RE.match(upper)
        if found is None:
            raise BadCommand(
                f"Element FETCH non pris en charge : {ascii_text(item)[:40]} (unsupported fetch item)"
            )
        verb, section, fields, start, length = found.groups()
        if section not in ("", "HEADER", "TEXT", "HEADER.FIELDS", "HEADER.FIELDS.NOT"):
            raise BadCommand(
                "Section non prise en charge : [], HEADER, TEXT, HEADER.FIELDS seulement (unsupported section)"
            )
        if (fields is not None) != section.startswith("HEADER.FIELDS"):
            raise BadCommand("HEADER.FIELDS attend une liste d'en-tetes (field list expected)")
        response_section = section + (f" ({fields})" if fields is not None else "")
        name = f"BODY[{response_section}]" + (f"<{start}>" if start is not None else "")
        kind_section = response_section
        return (
            "BODY",
            f"{verb}[{kind_section}]|{name}",
            kind_section,
            int(start) if start is not None else None,
            int(length) if length is not None else None,
        )

    @staticmethod
    def _fetch_response(
        m: StoredMessage, parsed: list[tuple[str, str, str | None, int | None, int | None]]
    ) -> bytes:
        raw: bytes | None = None
        out: list[bytes] = []
        for kind, name, section, start, length in parsed:
            if kind == "UID":
                out.append(b"UID %d" % m.uid)
            elif kind == "FLAGS":
                out.append(f"FLAGS ({' '.join(m.imap_flags)})".encode())
            elif kind == "RFC822.SIZE":
                out.append(b"RFC822.SIZE %d" % m.size)
            elif kind == "INTERNALDATE":
                out.append(f'INTERNALDATE "{internal_date_text(m.internal_date)}"'.encode())
            else:
                raw = raw if raw is not None else m.path.read_bytes()
                header, text = split_message(raw)
                if kind == "ENVELOPE":
                    out.append(b"ENVELOPE " + envelope(header))
                    continue
                if kind in ("RFC822", "RFC822.HEADER", "RFC822.TEXT"):
                    data = raw if kind == "RFC822" else header if kind == "RFC822.HEADER" else text
                    out.append(kind.encode() + b" {%d}\r\n" % len(data) + data)
                    continue
                assert section is not None
                if section == "":
                    data = raw
                elif section == "HEADER":
                    data = header
                elif section == "TEXT":
                    data = text
                else:
                    spec, _, names = section.partition(" ")
                    wanted = {n.strip('"').upper() for n in names.strip("()").split()}
                    data = header_fields(header, wanted, spec == "HEADER.FIELDS.NOT")
                if start is not None:
                    data = data[start : start + length if length is not None else None]
                response_name = name.split("|", 1)[1]
                out.append(response_name.encode() + b" {%d}\r\n" % len(data) + data)
        return b" ".join(out)

    # ------------------------------------------------------------------------------------- STORE / COPY

    async def store_cmd(self, name: str, args: list[Token], by_uid: bool = False) -> str:
        if len(args) != 3 or not isinstance(args[1], str):
            raise BadCommand("Syntaxe : STORE ensemble +FLAGS (\\Seen)")
        if self.readonly:
            raise _No("Dossier en lecture seule (read-only)", "READ-ONLY")
        action = args[1].upper()
        silent = action.endswith(".SILENT")
        action = action.removesuffix(".SILENT")
        modes = {"+FLAGS": "+", "-FLAGS": "-", "FLAGS": "="}
        if action not in modes:
            raise BadCommand("STORE attend FLAGS, +FLAGS ou -FLAGS")
        letters = _flag_letters(args[2] if isinstance(args[2], list) else [args[2]])
        state = await self._state()
        targets = self._targets(args[0], by_uid, state)
        assert self.user is not None and self.folder is not None
        await self._call(
            self.store.store_flags,
            self.user,
            self.folder,
            [m.uid for _, m in targets],
            letters,
            modes[action],
        )
        if not silent:
            fresh = (await self._state()).by_uid()
            out = []
            for seq, m in targets:
                now = fresh.get(m.uid)
                if now is not None:
                    uid_part = f"UID {m.uid} " if by_uid else ""
                    out.append(f"* {seq} FETCH ({uid_part}FLAGS ({' '.join(now.imap_flags)}))\r\n".encode())
            if out:
                await self.send(*out)
        return f"{'UID ' if by_uid else ''}STORE termine"

    async def copy(self, name: str, args: list[Token], by_uid: bool = False) -> str:
        if len(args) != 2:
            raise BadCommand(f"Syntaxe : {name} ensemble dossier")
        dest = self._folder_arg(args[1])
        if name == "MOVE" and self.readonly:
            raise _No("Dossier en lecture seule (read-only)", "READ-ONLY")
        state = await self._state()
        targets = self._targets(args[0], by_uid, state)
        assert self.user is not None and self.folder is not None
        try:
            dest_state = await self._call(self.store.folder, self.user, dest)
        except StoreError as exc:
            raise _No("Dossier de destination inexistant (no such folder)", "TRYCREATE") from exc
        pairs = await self._call(self.store.copy, self.user, self.folder, [m.uid for _, m in targets], dest)
        code = ""
        if pairs:
            src = uid_set_text([p[0] for p in pairs])
            dst = uid_set_text([p[1] for p in pairs])
            code = f"[COPYUID {dest_state.uidvalidity} {src} {dst}] "
        if name == "MOVE":
            if code:
                await self.send(f"* OK {code}Messages deplaces\r\n".encode())
            removed = await self._call(self.store.remove, self.user, self.folder, [p[0] for p in pairs])
            await self._send_expunged(removed)
            return f"{'UID ' if by_uid else ''}MOVE termine"
        return f"{code}{'UID ' if by_uid else ''}COPY termine"

    # ----------------------------------------------------------------------------------------------- IDLE

    async def idle(self, name: str, args: list[Token]) -> str:
        self._no_args(args)
        key = (self.user or "", self.folder or "") if self.folder is not None else None
        event = self.server._watch(key) if key is not None else asyncio.Event()
        await self.send(b"+ En attente (idling)\r\n")
        reader = asyncio.ensure_future(self._read_line())
        try:
            await self._sync(expunges=True)
            while True:
                waiter = asyncio.ensure_future(event.wait())
                done, _ = await asyncio.wait(
                    {reader, waiter}, timeout=self.server.idle_timeout_s, return_when=asyncio.FIRST_COMPLETED
                )
                if waiter not in done:
                    waiter.cancel()
                if reader in done:
                    try:
                        line = reader.result()
                    except _TooLong:
                        line = b""
                    break
                if not done:
                    await self.send(b"* BYE Delai d'inactivite depasse (idle timeout)\r\n")
                    raise _Disconnect
                event.clear()
                await self._sync(expunges=True)
        finally:
            if key is not None:
                self.server._unwatch(key, event)
            if not reader.done():
                reader.cancel()
        if line.strip().upper() != b"DONE":
            raise BadCommand("DONE attendu pour terminer IDLE (DONE expected)")
        return "IDLE termine"


def _flag_letters(flags: list[Token]) -> str:
    letters = ""
    for flag in flags:
        if not isinstance(flag, str):
            raise BadCommand("Drapeau invalide (bad flag)")
        if flag.startswith("\\") and flag.lower() not in FLAG_LETTERS and flag.lower() != "\\recent":
            raise BadCommand(f"Drapeau systeme inconnu : {ascii_text(flag)[:30]}")
        # Keywords are not in PERMANENTFLAGS (no \*): Maildir without a keyword file cannot keep them.
        letters += FLAG_LETTERS.get(flag.lower(), "")
    return letters


_Predicate = Callable[[int, StoredMessage, Callable[[StoredMessage], bytes]], bool]
