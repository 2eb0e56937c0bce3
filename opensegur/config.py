"""Settings, read once at the edge (CLI) and passed down.

Precedence: command-line flags > ``OPENSEGUR_*`` environment variables > TOML file > defaults.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict
from sqlalchemy.engine import make_url

SECRET_HINT = "***"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OPENSEGUR_", extra="forbid")

    data_dir: Path = Path("var")
    db: str | None = Field(default=None, description="SQLAlchemy URL; default: SQLite file in data_dir")
    host: str = "127.0.0.1"
    http_port: int = 8000
    # HTTP bounds: open connections (beyond: 503), and the time a new connection has to send a first request's
    # headers (idle or dribbling peers are closed after it).
    http_max_connections: int = Field(default=4096, ge=1)
    http_header_timeout_s: float = Field(default=30.0, gt=0)
    mllp_port: int = 2575
    mllp_max_bytes: int = 20 * 1024 * 1024
    # Bounds against a careless or hostile sender: open connections, the wait for a frame on an idle connection,
    # the time a started frame may take, and the bytes all frames being read may hold together.
    mllp_max_connections: int = Field(default=500, ge=1)
    mllp_max_per_peer: int = Field(default=50, ge=1)
    mllp_idle_timeout_s: float = Field(default=1800.0, gt=0)
    mllp_frame_timeout_s: float = Field(default=300.0, gt=0)
    mllp_receive_budget: int = Field(default=128 * 1024 * 1024, ge=1024 * 1024)
    # MLLP over TLS: the listener's certificate and key, and the CA (or bundle) that issued the DPIs' client
    # certificates. All three or none; without them the listener speaks plain MLLP.
    mllp_tls_cert: str | None = None
    mllp_tls_key: str | None = None
    mllp_tls_client_ca: str | None = None
    demo: bool = False
    # The hospital's configuration directory (TOML: GHT, sites, DPIs, mailboxes, roles); demo: the demo GHT's.
    config_dir: Path | None = None
    # The simulated national services publish test passwords and admin endpoints: on with --demo only, unless
    # set explicitly (another editor's CI may want the sandbox without the demo data).
    sandbox: bool | None = None
    sandbox_port: int = 0  # 0: pick a free port, published at /sandbox/endpoints
    workers: int = 2
    job_max_attempts: int = 8
    job_backoff_base_s: float = 2.0
    job_backoff_max_s: float = 600.0
    job_outage_max_s: float = 3 * 86400.0  # a DMP or MSSanté outage is waited out this long, attempts unspent
    job_lease_s: float = 60.0
    insi_url: str | None = None  # None with the sandbox: the sandbox INSi
    insi_timeout_s: float = 10.0
    insi_client_cert: str | None = None
    insi_client_key: str | None = None
    insi_ca: str | None = None
    insi_lps_name: str = "OpenSegur"
    insi_lps_version: str = "0.1.0"
    insi_idam: str = "OPENSEGUR-SANDBOX"  # the LPS authorisation number the CNAM issues after homologation
    insi_emitter: str = "OPENSEGUR"  # the calling structure, as in the OU of the INSi certificate
    # DMP (XDS.b). Without URLs and with the sandbox on, the sandbox DMP and its test PKI are used.
    dmp_iti41_url: str | None = None
    dmp_iti18_url: str | None = None
    dmp_iti43_url: str | None = None
    dmp_td02_url: str | None = None
    dmp_access_history_url: str | None = (
        None  # the sandbox's JSON extension: the DMP publishes no such service
    )
    dmp_iti57_url: str | None = None
    dmp_signing_cert: str | None = None  # structure's signature certificate (VIHF, XAdES), PEM with chain
    dmp_signing_key: str | None = None
    dmp_tls_cert: str | None = None
    dmp_tls_key: str | None = None
    dmp_ca: str | None = None
    dmp_timeout_s: float = 30.0
    dmp_lps_homologation_id: str = "OPENSEGUR-SANDBOX"
    oid_root: str = "1.2.250.1.999.42"  # fictitious arc for the sandbox: production sets the editor's own
    cache_dir: Path | None = None  # compiled schematrons; default: data_dir/cache
    validation_strict: bool = False  # every schematron failure blocks, not only the blocking findings
    # Processes running the CI-SIS schematrons (Saxon keeps the GIL); 0 runs them in the workers' threads.
    validation_processes: int = 1
    validation_time_limit_s: float = Field(default=60.0, gt=0)
    # Where business acknowledgements (ZAM) go when a structure does not say: "host:port" of the DPI.
    zam_endpoint: str | None = None
    rest_max_upload_bytes: int = 20 * 1024 * 1024
    # Annuaire Santé FHIR API. Without a URL and with the sandbox on, the sandbox directory is used.
    annuaire_url: str | None = None  # production: https://gateway.api.esante.gouv.fr/fhir/v2
    annuaire_api_key: SecretStr | None = None  # ESANTE-API-KEY, from portal.api.esante.gouv.fr
    annuaire_timeout_s: float = 10.0
    annuaire_ca: str | None = None
    # MSSanté operator. Without hosts and with the sandbox on, the sandbox operator (SMTP + IMAP on loopback).
    mss_smtp_host: str | None = None
    mss_smtp_port: int = 587
    mss_smtp_security: Literal["plain", "starttls", "tls"] = "starttls"
    mss_smtp_username: str | None = None  # default: the sender mailbox
    mss_smtp_password: SecretStr | None = None
    mss_imap_host: str | None = None
    mss_imap_port: int = 993
    mss_imap_security: Literal["plain", "starttls", "tls"] = "tls"
    # The hospital's mailboxes the platform polls (organisational, applicative): address -> IMAP password.
    mss_mailboxes: dict[str, SecretStr] = {}
    mss_mailbox_sites: dict[str, str] = {}  # mailbox -> site FINESS: patient matching restricted to that site
    mss_client_cert: str | None = None
    mss_client_key: str | None = None
    mss_ca: str | None = None  # the IGC-Santé bundle in production
    mss_timeout_s: float = 30.0
    mss_processed_folder: str = "OpenSegur/Traites"
    mss_max_message_bytes: int = 40_000_000
    mss_max_attachment_bytes: int = 25_000_000
    mss_poll_interval_s: float = 30.0
    mss_poll_limit: int = 20
    mssante_sender: str | None = None  # the applicative mailbox mail leaves from (FROM)
    mssante_nil: str = "OPENSEGUR-SANDBOX"  # X-MSS-NIL: the product's reference in the MSSanté référentiel
    # The DPI's MLLP listener for documents received by MSSanté (MDM); default: the ZAM endpoint.
    dpi_mdm_endpoint: str | None = None
    dpi_mdm_application: str = "DPI"
    dpi_mdm_facility: str = ""
    dpi_timeout_s: float = 30.0
    dpi_forward_results_oru: bool = False  # biology received by mail also goes to the DPI as ORU^R01 results
    # DRIMbox source (imaging): the PACS it asks which images an imaging report's exam holds, and the WADO-RS
    # address other DRIMboxes retrieve them from. Without a PACS host no manifest is published.
    pacs_host: str | None = None
    pacs_port: int = 104
    pacs_aet: str = "PACS"
    drimbox_aet: str = "OPENSEGUR"  # our AE title, as declared in the PACS
    drimbox_wado_url: str | None = None  # e.g. https://drimbox.chu-x.fr/dicom-web
    pacs_timeout_s: float = 30.0
    # The PACS's own WADO-RS root, when it has one (e.g. http://pacs.ght.local:8042/dicom-web): the DRIMbox then
    # streams the series other DRIMboxes ask for straight through from it, instead of C-GET.
    pacs_wado_url: str | None = None
    # How an exam of another hospital is imported into the PACS: C-STORE, or STOW-RS to pacs_wado_url.
    pacs_import: Literal["c-store", "stow-rs"] = "c-store"
    # A folder watched for HL7 v2 messages written as files (teleradiology, a PACS writing its reports): each goes
    # through the MLLP intake, then to traites/ or refuses/ with its ACK beside it.
    hl7_drop_dir: Path | None = None
    hl7_drop_interval_s: float = Field(default=2.0, gt=0)
    # Where the DRIMbox listens for what the PACS pushes (IOCM Rejection Notes, C-STORE from pacs_aet only).
    drimbox_dicom_port: int | None = None
    # Pro Santé Connect introspection of the tokens other DRIMboxes present; with the sandbox on, the sandbox PSC's.
    drimbox_psc_introspection_url: str | None = None
    drimbox_psc_client_id: str | None = None
    drimbox_psc_client_secret: SecretStr | None = None
    # DRIMbox consumer: where the exams retrieved from other hospitals' DRIMboxes are kept (default: imagerie/ in
    # the data directory), how much of them, and how long after they were last looked at.
    drimbox_cache_dir: Path | None = None
    drimbox_cache_max_mb: int = Field(default=20_000, ge=10)
    drimbox_cache_days: float = Field(default=14.0, gt=0)
    drimbox_remote_timeout_s: float = 60.0
    # The ANS's signed list of trusted DRIMboxes, the IGC-Santé CA certificate(s) its signer chains to, and the
    # signer's name: no other DRIMbox is asked for images. With the sandbox and none set, the sandbox's own list
    # (its remote DRIMbox), signed by its PKI.
    drimbox_directory_file: Path | None = None
    drimbox_directory_ca: Path | None = None
    drimbox_directory_signer_cn: str = "Liste Blanche DRIM-M"
    # Mutual TLS between DRIMboxes, with the DRIMbox's operator certificate (IGC-Santé, the DN the list gives).
    # Served: the WADO-RS of other DRIMboxes on its own port, in TLS, a client certificate from drimbox_tls_client_ca
    # required, its subject that of a listed DRIMbox; the plain port then serves no image.
    drimbox_tls_port: int | None = None
    drimbox_tls_cert: Path | None = None
    drimbox_tls_key: Path | None = None
    drimbox_tls_client_ca: Path | None = None
    # Asked: the consumer presents this certificate, trusts drimbox_remote_ca (else the system's authorities) and
    # checks the other DRIMbox's certificate is the one the list names.
    drimbox_client_cert: Path | None = None
    drimbox_client_key: Path | None = None
    drimbox_remote_ca: Path | None = None
    # The OHIF viewer's prebuilt files (make install puts them beside the Python environment: share/ohif/dist).
    viewer_dir: Path | None = None
    # Login sessions: idle and absolute expiry; cookies marked Secure when the platform is reached over HTTPS.
    session_idle_s: int = 30 * 60
    session_absolute_s: int = 12 * 3600
    public_base_url: str | None = None  # e.g. https://segur.chu-x.fr: redirects and cookies are built from it
    log_level: str = "INFO"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _TomlSource(settings_cls))

    @model_validator(mode="after")
    def _mllp_tls_complete(self) -> Settings:
        given = (self.mllp_tls_cert, self.mllp_tls_key, self.mllp_tls_client_ca)
        if any(given) and not all(given):
            raise ValueError("MLLP sur TLS : mllp_tls_cert, mllp_tls_key et mllp_tls_client_ca vont ensemble")
        return self

    @model_validator(mode="after")
    def _drimbox_reachable(self) -> Settings:
        if self.pacs_host and not self.drimbox_wado_url:
            raise ValueError(
                "DRIMbox : pacs_host demande drimbox_wado_url, l'adresse WADO-RS où les autres DRIMbox "
                "récupèrent les images"
            )
        if (self.drimbox_directory_file is None) != (self.drimbox_directory_ca is None):
            raise ValueError(
                "DRIMbox : la liste blanche (drimbox_directory_file) se configure avec l'autorité de l'IGC-Santé "
                "de son signataire (drimbox_directory_ca), l'un ne va pas sans l'autre"
            )
        if self.pacs_import == "stow-rs" and not self.pacs_wado_url:
            raise ValueError(
                "DRIMbox : pacs_import = stow-rs demande pacs_wado_url, l'adresse DICOMweb du PACS"
            )
        mutual = (
            self.drimbox_tls_port,
            self.drimbox_tls_cert,
            self.drimbox_tls_key,
            self.drimbox_tls_client_ca,
        )
        if any(v is not None for v in mutual) and any(v is None for v in mutual):
            raise ValueError(
                "DRIMbox : le TLS mutuel se configure entier (drimbox_tls_port, drimbox_tls_cert, drimbox_tls_key, "
                "drimbox_tls_client_ca)"
            )
        if (self.drimbox_client_cert is None) != (self.drimbox_client_key is None):
            raise ValueError("DRIMbox : drimbox_client_cert et drimbox_client_key vont ensemble")
        return self

    @property
    def sandbox_on(self) -> bool:
        return self.demo if self.sandbox is None else self.sandbox

    @property
    def db_url(self) -> str:
        if self.db:
            return self.db
        return f"sqlite:///{(self.data_dir / 'opensegur.db').resolve()}"

    def public_dict(self) -> dict[str, Any]:
        """Effective configuration with secrets and database passwords masked."""
        out: dict[str, Any] = {}
        for name, value in self.model_dump().items():
            if isinstance(value, SecretStr):
                out[name] = SECRET_HINT if value.get_secret_value() else None
            elif isinstance(value, dict):
                out[name] = {k: SECRET_HINT if isinstance(v, SecretStr) else v for k, v in value.items()}
            elif isinstance(value, Path):
                out[name] = str(value)
            else:
                out[name] = value
        out["db_url"] = _mask_url(self.db_url)
        out["db"] = _mask_url(self.db) if self.db else None
        return out


class _TomlSource(PydanticBaseSettingsSource):
    """The TOML file named by OPENSEGUR_CONFIG (or ./opensegur.toml), table [opensegur] or top level."""

    def __init__(self, settings_cls: type[BaseSettings]) -> None:
        super().__init__(settings_cls)
        path = Path(os.environ.get("OPENSEGUR_CONFIG", "opensegur.toml"))
        self._data: dict[str, Any] = {}
        if path.is_file():
            with path.open("rb") as fh:
                raw = tomllib.load(fh)
            self._data = raw.get("opensegur", raw)

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return {k: v for k, v in self._data.items() if k in self.settings_cls.model_fields}


def _mask_url(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url
