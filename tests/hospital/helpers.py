"""A hospital that is not the demo one, written as a configuration directory: two sites with their IPP domains,
a DPI, a mailbox, roles and identity providers."""

from __future__ import annotations

from pathlib import Path

GHT = """\
finess = "330000019"
name = "GHT de l'Estuaire (test)"
"""

SITES = """\
[[sites]]
finess = "330000027"
name = "CH de Montval — site Nord"
ipp_domain = { namespace = "CHMV-N", oid = "1.2.250.1.999.77.1" }
facility_aliases = ["CHMV"]

[[sites.units]]
code = "1001"
label = "Urgences"

[[sites.units]]
code = "2002"
label = "Pneumologie"

[[sites]]
finess = "330000035"
name = "CH de Montval — site Sud"
ipp_domain = { namespace = "CHMV-S", oid = "1.2.250.1.999.77.2" }

[[sites.units]]
code = "3003"
label = "Gériatrie"
"""

DPIS = """\
[[dpis]]
name = "DPI Montval"
site = "330000027"
msh3 = ["DPI-MV"]
msh4 = ["CHMV-NORD"]
senders = ["10.20.0.0/24"]
zam_endpoint = "10.20.0.5:6661"
"""

MSSANTE = """\
[[mailboxes]]
address = "urgences@ch-montval.mssante.fr"
site = "330000027"
kind = "organisationnelle"
unit = "1001"
"""

ROLES = """\
[roles.medecin]
label = "Médecin"
actions = ["identity.read", "documents.read", "dmp.consult"]

[roles.secretaire_medicale]
label = "Secrétaire médicale"
actions = [
  "identity.read",
  "documents.read",
  "mail.triage",
]

[roles.admin_technique]
label = "Administrateur technique"
actions = ["admin", "ops.read"]
"""

IDENTITY_PROVIDERS = """\
[sso]
issuer = "https://sso.ch-montval.fr/realms/hopital"
client_id = "opensegur"
client_secret_env = "OPENSEGUR_SSO_SECRET"
mfa_amr = ["mfa", "otp"]

[psc]
issuer = "https://auth.esante.gouv.fr/auth/realms/esante-wallet"
client_id = "ch-montval-opensegur"
client_secret_env = "OPENSEGUR_PSC_SECRET"
"""

FILES = {
    "ght.toml": GHT,
    "sites.toml": SITES,
    "dpis.toml": DPIS,
    "mssante.toml": MSSANTE,
    "roles.toml": ROLES,
    "identity_providers.toml": IDENTITY_PROVIDERS,
}


def write_config(directory: Path, **texts: str | None) -> Path:
    """Write the test hospital into ``directory``; ``texts`` replace files by stem (``sites=…``), None leaves a
    file out."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, default in FILES.items():
        text = texts.get(name.removesuffix(".toml"), default)
        path = directory / name
        if text is not None:
            path.write_text(text, encoding="utf-8")
        else:
            path.unlink(missing_ok=True)
    return directory


def line_of(text: str, needle: str, occurrence: int = 1) -> int:
    """1-based line of the ``occurrence``-th line containing ``needle``."""
    found = [n for n, line in enumerate(text.splitlines(), 1) if needle in line]
    return found[occurrence - 1]
