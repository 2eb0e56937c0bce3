"""Settings refuse a DRIMbox configuration that would half work, with the French reason."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from opensegur.config import Settings


@pytest.mark.parametrize(
    ("given", "reason"),
    [
        ({"pacs_host": "pacs.local"}, "drimbox_wado_url"),
        ({"drimbox_directory_file": "l.xml"}, "drimbox_directory_ca"),
        ({"drimbox_tls_port": 8443, "drimbox_tls_cert": "c.pem"}, "TLS mutuel se configure entier"),
        ({"drimbox_client_cert": "c.pem"}, "vont ensemble"),
        (
            {"pacs_host": "p", "drimbox_wado_url": "https://d/dicom-web", "pacs_import": "stow-rs"},
            "pacs_wado_url",
        ),
    ],
    ids=[
        "pacs without wado url",
        "list without authority",
        "half mutual tls",
        "certificate without key",
        "stow without dicomweb",
    ],
)
def test_a_half_drimbox_configuration_is_refused(
    tmp_path: Path, given: dict[str, object], reason: str
) -> None:
    with pytest.raises(ValidationError, match=reason):
        Settings(data_dir=tmp_path, **given)  # type: ignore[arg-type]


def test_a_whole_mutual_tls_configuration_is_taken(tmp_path: Path) -> None:
    s = Settings(
        data_dir=tmp_path,
        drimbox_tls_port=8443,
        drimbox_tls_cert=tmp_path / "c.pem",
        drimbox_tls_key=tmp_path / "k.pem",
        drimbox_tls_client_ca=tmp_path / "ca.pem",
    )
    assert s.drimbox_tls_port == 8443 and s.drimbox_directory_signer_cn == "Liste Blanche DRIM-M"
