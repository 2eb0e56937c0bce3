"""HTML printed to PDF by headless Chromium, when it is installed (it is in CI and in the Debian package list):
the conformance report and the HospiConnect self-assessment are documents a hospital files."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

__all__ = ["browser", "html_to_pdf", "print_to_pdf"]


def browser() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def print_to_pdf(html: Path, pdf: Path) -> bool:
    """``html`` printed to ``pdf``; False when no browser is installed or it produced nothing."""
    command = browser()
    if command is None:
        return False
    subprocess.run(
        [
            command,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-pdf-header-footer",
            f"--print-to-pdf={pdf}",
            html.resolve().as_uri(),
        ],
        check=False,
        capture_output=True,
        timeout=120,
    )
    return pdf.exists() and pdf.stat().st_size > 0


def html_to_pdf(html: str) -> bytes | None:
    """A self-contained page (no external resource) as PDF bytes, or None without a browser."""
    with tempfile.TemporaryDirectory(prefix="opensegur-pdf-") as tmp:
        page, pdf = Path(tmp) / "page.html", Path(tmp) / "page.pdf"
        page.write_text(html, encoding="utf-8")
        return pdf.read_bytes() if print_to_pdf(page, pdf) else None
