"""The settings that point a platform at a sandbox started apart (``sandbox_process``): its INSi and DMP
addresses and the DMP's test certificates, for every benchmark that runs a platform against it."""

from __future__ import annotations

from typing import Any


def sandbox_settings(endpoints: dict[str, Any]) -> dict[str, Any]:
    dmp = endpoints["dmp"]
    return {
        "sandbox": False,
        "insi_url": endpoints["insi"]["url"],
        "dmp_iti41_url": dmp["iti41"],
        "dmp_iti18_url": dmp["iti18"],
        "dmp_iti43_url": dmp["iti43"],
        "dmp_iti57_url": dmp["iti57"],
        "dmp_signing_cert": dmp["test_pki"]["client_cert"],
        "dmp_signing_key": dmp["test_pki"]["client_key"],
    }
