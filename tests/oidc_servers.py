"""Real HTTP servers on loopback for the OpenID Connect tests: an ASGI app under uvicorn in a thread, and the
npm ``oidc-provider`` under Debian's node; plus a browser that follows redirects by hand and keeps cookies."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from html import unescape
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

OIDC_PROVIDER_DIR = Path(__file__).parent / "oidc_provider"
NODE = shutil.which("node") or shutil.which("nodejs")


def loopback_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    return sock


def url_of(sock: socket.socket) -> str:
    return f"http://127.0.0.1:{sock.getsockname()[1]}"


@contextmanager
def serve(app: Any, sock: socket.socket) -> Iterator[str]:
    """``app`` served over real HTTP on ``sock`` until the block ends."""
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield url_of(sock)
    finally:
        server.should_exit = True
        thread.join(10)


@contextmanager
def oidc_provider(
    client_id: str, client_secret: str, redirect_uri: str, users: dict[str, Any]
) -> Iterator[str]:
    """The certified OpenID Provider started for the test; yields its issuer. Installed by
    ``npm ci --prefix tests/oidc_provider`` (.ci/run does it)."""
    if NODE is None or not (OIDC_PROVIDER_DIR / "node_modules" / "oidc-provider").is_dir():
        if os.environ.get("CI"):
            pytest.fail("node and tests/oidc_provider/node_modules are required in CI (npm ci --prefix …)")
        pytest.skip("oidc-provider not installed: npm ci --prefix tests/oidc_provider")
    env = os.environ | {
        "OP_CLIENT_ID": client_id,
        "OP_CLIENT_SECRET": client_secret,
        "OP_REDIRECT_URI": redirect_uri,
        "OP_USERS": json.dumps(users),
        "NODE_ENV": "test",
    }
    process = subprocess.Popen(
        [NODE, str(OIDC_PROVIDER_DIR / "provider.mjs")],
        cwd=OIDC_PROVIDER_DIR,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line:
            raise AssertionError(
                f"oidc-provider did not start: {process.stderr.read() if process.stderr else ''}"
            )
        yield json.loads(line)["issuer"]
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class Browser:
    """Follows redirects one at a time, across the platform and the provider, keeping cookies as a browser
    does; ``hops`` records every answer."""

    def __init__(self) -> None:
        self.http = httpx.Client(timeout=20, follow_redirects=False)
        self.hops: list[httpx.Response] = []

    def close(self) -> None:
        self.http.close()

    def go(self, url: str, *, stop_at: str | None = None, limit: int = 10) -> httpx.Response:
        """GET ``url`` and follow redirects, stopping before a URL starting with ``stop_at``."""
        response = self.http.get(url)
        return self.follow(response, stop_at=stop_at, limit=limit)

    def follow(
        self, response: httpx.Response, *, stop_at: str | None = None, limit: int = 10
    ) -> httpx.Response:
        self.hops.append(response)
        for _ in range(limit):
            if not response.is_redirect:
                return response
            target = str(response.url.join(response.headers["location"]))
            if stop_at is not None and target.startswith(stop_at):
                return response
            response = self.http.get(target)
            self.hops.append(response)
        raise AssertionError("too many redirects")

    def submit(self, page: httpx.Response, fields: dict[str, str], **kwargs: Any) -> httpx.Response:
        """Post the page's first form: its hidden inputs plus ``fields``."""
        action = re.search(r'<form[^>]*action="([^"]+)"', page.text)
        assert action is not None, page.text
        data = {
            unescape(m.group(1)): unescape(m.group(2))
            for m in re.finditer(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', page.text)
        }
        data.update(fields)
        response = self.http.post(str(page.url.join(unescape(action.group(1)))), data=data)
        return self.follow(response, **kwargs)
