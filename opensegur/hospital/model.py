"""What each file of the configuration directory may hold, and the whole configuration they make together.

Every model forbids unknown keys: a misspelt key in a hospital's file is an error, never silently ignored.
Descriptions are French: editors show them from the generated JSON Schema.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from dataclasses import dataclass
from functools import cached_property
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
)

from opensegur.identity.professionals import validate_finess
from opensegur.security.matrix import Action, Matrix, matrix_from_config

_OID_RE = re.compile(r"^[0-2](\.(0|[1-9][0-9]*))+$")
_ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _oid(value: str) -> str:
    if not _OID_RE.match(value):
        raise ValueError(
            f"OID « {value} » mal formé : attendu des nombres séparés par des points (ex. 1.2.250.1…)"
        )
    return value


def _endpoint(value: str) -> str:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"Adresse « {value} » invalide : attendu « hôte:port »")
    return value


def _network(value: str) -> str:
    try:
        return str(ipaddress.ip_network(value, strict=False))
    except ValueError:
        raise ValueError(
            f"« {value} » n'est ni une adresse IP ni un réseau (ex. 10.1.2.3 ou 10.1.2.0/24)"
        ) from None


def _env_name(value: str) -> str:
    if not _ENV_RE.match(value):
        raise ValueError(
            f"« {value} » n'est pas un nom de variable d'environnement : le secret lui-même ne s'écrit jamais "
            "dans ces fichiers, seulement le nom de la variable qui le contient"
        )
    return value


def _issuer(value: str) -> str:
    # OpenID Connect requires https; plain http only for a provider on this machine (tests, a local sandbox).
    if value.startswith("https://") or re.match(
        r"^http://(localhost|127\.0\.0\.1|\[::1\])(:\d+)?(/|$)", value
    ):
        return value.rstrip("/")
    raise ValueError(f"Émetteur « {value} » invalide : une URL https:// est attendue")


def _mailbox(value: str) -> str:
    local, at, domain = value.strip().rpartition("@")
    if not at or not local or not (domain.lower() == "mssante.fr" or domain.lower().endswith(".mssante.fr")):
        raise ValueError(
            f"Adresse « {value} » invalide : une boîte MSSanté est de la forme nom@domaine.mssante.fr"
        )
    return f"{local}@{domain}"


Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
Finess = Annotated[
    str, AfterValidator(validate_finess), Field(description="Numéro FINESS (9 caractères, clé de Luhn)")
]
Endpoint = Annotated[str, AfterValidator(_endpoint), Field(description="« hôte:port » de l'écoute MLLP")]
Network = Annotated[str, AfterValidator(_network)]
EnvName = Annotated[
    str,
    AfterValidator(_env_name),
    Field(description="Nom de la variable d'environnement qui contient le secret"),
]
Issuer = Annotated[str, AfterValidator(_issuer), Field(description="URL de l'émetteur OpenID Connect")]
RoleId = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]*$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _french(description: str) -> ConfigDict:
    """The model's description in the JSON Schema, French for the editors' users (the docstring is for us)."""
    return ConfigDict(extra="forbid", frozen=True, json_schema_extra={"description": description})


# ---- ght.toml


class GhtConfig(_Strict):
    """The GHT, or the legal entity when the platform serves one hospital alone."""

    model_config = _french("Le GHT, ou l'entité juridique quand la plateforme sert un seul établissement")

    finess: Finess = Field(description="FINESS juridique de l'établissement support")
    name: Text = Field(description="Nom affiché")


# ---- sites.toml


class IppDomain(_Strict):
    """The authority a DPI names in PID-3.4 for the IPPs of a site."""

    model_config = _french("Domaine d'identification des IPP du site, tel que le GAM le nomme en PID-3.4")

    namespace: Text = Field(description="Espace de noms (PID-3.4.1), ex. « CHU-X »")
    # Before ``oid``: its validator reads it.
    oid_type: Text = Field(
        "ISO", description="Type de l'identifiant universel (PID-3.4.3, table HL7 0301) ; ISO par défaut"
    )
    oid: Text = Field(description="Identifiant universel (PID-3.4.2) : un OID quand oid_type vaut ISO")

    @field_validator("oid")
    @classmethod
    def _oid_syntax(cls, value: str, info: ValidationInfo) -> str:
        return _oid(value) if info.data.get("oid_type") == "ISO" else value


class UnitConfig(_Strict):
    code: Text = Field(description="Code de l'unité fonctionnelle (UF)")
    label: Text = Field(description="Libellé de l'UF")


class SiteConfig(_Strict):
    finess: Finess = Field(description="FINESS géographique du site")
    name: Text
    ipp_domain: IppDomain
    secteur_activite: Annotated[str, StringConstraints(pattern=r"^SA[0-9]{2}$")] = Field(
        "SA01", description="Secteur d'activité (TRE_R02), porté dans le VIHF et les métadonnées DMP"
    )
    facility_aliases: list[Text] = Field(
        default_factory=list,
        description="Noms sous lesquels les DPI désignent le site en MSH-4 ou PRT-8",
    )
    dmp_prefetch: bool = Field(
        True,
        description="À l'admission, préparer la liste des documents DMP du patient pour le médecin responsable "
        "(PV1-7) ; l'historique des accès du DMP montre alors une consultation à son nom",
    )
    units: list[UnitConfig] = Field(default_factory=list)


class SitesFile(_Strict):
    sites: list[SiteConfig] = Field(min_length=1)


# ---- dpis.toml


class DpiConfig(_Strict):
    """A system (DPI, GAM, RIS, SIL…) that talks HL7 to the platform."""

    model_config = _french("Un système (DPI, GAM, RIS, SIL…) qui échange en HL7 avec la plateforme")

    name: Text
    site: Finess = Field(description="FINESS géographique du site qu'il sert (déclaré dans sites.toml)")
    msh3: list[Text] = Field(default_factory=list, description="Noms d'application envoyés en MSH-3")
    msh4: list[Text] = Field(default_factory=list, description="Noms d'établissement envoyés en MSH-4")
    senders: list[Network] = Field(
        default_factory=list, description="Adresses IP ou réseaux autorisés à envoyer en MLLP"
    )
    zam_endpoint: Endpoint | None = Field(None, description="Écoute MLLP du DPI pour les accusés métier ZAM")
    mdm_endpoint: Endpoint | None = Field(None, description="Écoute MLLP du DPI pour les documents MDM reçus")


class DpisFile(_Strict):
    dpis: list[DpiConfig] = Field(default_factory=list)


# ---- mssante.toml


class MailboxConfig(_Strict):
    address: Annotated[str, AfterValidator(_mailbox)]
    site: Finess = Field(description="FINESS géographique du site de la boîte (déclaré dans sites.toml)")
    kind: Literal["organisationnelle", "applicative"]
    unit: Text | None = Field(None, description="Code de l'UF de la boîte, s'il y a lieu")


class MailboxesFile(_Strict):
    mailboxes: list[MailboxConfig] = Field(default_factory=list)


# ---- roles.toml


class RoleConfig(_Strict):
    label: Text = Field(description="Libellé affiché dans la matrice d'habilitation")
    actions: list[Action] = Field(description="Actions accordées par le rôle")

    @field_validator("actions")
    @classmethod
    def _some_action(cls, actions: list[Action]) -> list[Action]:
        if not actions:
            raise ValueError("le rôle n'accorde aucune action : donnez-lui au moins une action ou retirez-le")
        return actions


class RolesFile(_Strict):
    roles: dict[RoleId, RoleConfig] = Field(min_length=1)


# ---- identity_providers.toml


class HospitalSso(_Strict):
    """The hospital's single sign-on (OpenID Connect)."""

    model_config = _french("Authentification unique de l'établissement (OpenID Connect)")

    issuer: Issuer
    client_id: Text
    client_secret_env: EnvName
    mfa_acr: list[Text] = Field(
        default_factory=list, description="Valeurs acr qui attestent une authentification forte"
    )
    mfa_amr: list[Text] = Field(
        default_factory=list,
        description="Valeurs amr qui attestent une authentification forte (ex. mfa, otp)",
    )
    login_claim: Text = Field(
        "preferred_username",
        description="Revendication du jeton qui porte l'identifiant du compte OpenSégur (ex. preferred_username, "
        "upn, email)",
    )


class ProSanteConnect(_Strict):
    issuer: Issuer
    client_id: Text
    client_secret_env: EnvName
    acr: Literal["eidas1"] = Field("eidas1", description="Niveau demandé (acr_values)")


class IdentityProvidersFile(_Strict):
    sso: HospitalSso | None = None
    psc: ProSanteConnect | None = None


# ---- the whole directory


class HospitalConfig(_Strict):
    """The configuration a directory declares, once each file and the references between files are valid."""

    ght: GhtConfig
    sites: list[SiteConfig]
    dpis: list[DpiConfig] = Field(default_factory=list)
    mailboxes: list[MailboxConfig] = Field(default_factory=list)
    roles: dict[str, RoleConfig]
    identity_providers: IdentityProvidersFile = Field(default_factory=IdentityProvidersFile)
    # The texts read, by path relative to the directory: hashed and kept with each applied version.
    files: dict[str, str] = Field(default_factory=dict)

    @cached_property
    def matrix(self) -> Matrix:
        return matrix_from_config(
            {rid: (r.label, [a.value for a in r.actions]) for rid, r in self.roles.items()}
        )

    @property
    def sha256(self) -> str:
        return content_hash(self.files)

    def site(self, finess: str) -> SiteConfig | None:
        return next((s for s in self.sites if s.finess == finess), None)


def content_hash(files: dict[str, str]) -> str:
    """Hash of the canonical content: paths sorted, line endings normalised (a checkout on Windows is no change)."""
    canonical = {path: text.replace("\r\n", "\n") for path, text in files.items()}
    return hashlib.sha256(json.dumps(canonical, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


@dataclass(frozen=True)
class ConfigFile:
    """One file of the directory: its model, and where its content goes in :class:`HospitalConfig` (``key``:
    the file's top-level key holding the field; None: the whole file is the field)."""

    name: str
    model: type[_Strict]
    field: str
    key: str | None
    required: bool


CONFIG_FILES = (
    ConfigFile("ght.toml", GhtConfig, "ght", None, True),
    ConfigFile("sites.toml", SitesFile, "sites", "sites", True),
    ConfigFile("dpis.toml", DpisFile, "dpis", "dpis", False),
    ConfigFile("mssante.toml", MailboxesFile, "mailboxes", "mailboxes", False),
    ConfigFile("roles.toml", RolesFile, "roles", "roles", True),
    ConfigFile("identity_providers.toml", IdentityProvidersFile, "identity_providers", None, False),
)
