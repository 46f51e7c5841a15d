"""The node's settings: embedded defaults, then a TOML file, then ``CODEBRAIN_<SECTION>__<KEY>`` variables.

Read once at start (:func:`load_settings`) and passed down; no other module reads the environment. Every value
remembers where it came from so ``codebrain-node config show`` can say so, and validation names the offending key
(``dicom.port (env CODEBRAIN_DICOM__PORT): Input should be a valid integer``) instead of printing a traceback.
"""

from __future__ import annotations

import ipaddress
import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from codebrain_node.contrasts import Contrast
from codebrain_node.resources import config_file

ENV_PREFIX = "CODEBRAIN_"
CONFIG_ENV = "CODEBRAIN_CONFIG"
DEFAULT_CONFIG_FILE = config_file("node.toml")


class ConfigError(ValueError):
    """A setting is missing, unknown or of the wrong type; the message names the key and its source."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @model_validator(mode="before")
    @classmethod
    def _split_comma_lists(cls, values: Any) -> Any:
        """Let list settings come from the environment as ``A,B,C`` as well as JSON."""
        if not isinstance(values, dict):
            return values
        for name, field in cls.model_fields.items():
            value = values.get(name)
            if isinstance(value, str) and getattr(field.annotation, "__origin__", None) is list:
                values[name] = [item.strip() for item in value.split(",") if item.strip()]
        return values


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "codebrain-node"


class PathsSettings(_Section):
    data_dir: Path = Field(default_factory=_default_data_dir)


class DatabaseSettings(_Section):
    #: Empty means ``sqlite:///<data_dir>/codebrain.db``.
    url: SecretStr = SecretStr("")
    echo: bool = False


class StorageCommitmentPeer(_Section):
    """A peer that may ask us for Storage Commitment (PS3.4 Annex J) and where its N-EVENT-REPORT goes: a new
    association to ``host:port`` (our ``dicom.ae_title`` calling ``ae_title``), or the one it asked on."""

    ae_title: Annotated[str, Field(min_length=1, max_length=16, pattern=r"^[ -~]*[!-~][ -~]*$")]
    host: Annotated[str, Field(min_length=1)]
    port: Annotated[int, Field(ge=1, le=65535)]
    #: ``new``: report on a new association to host:port (what most peers, Orthanc among them, expect);
    #: ``same``: on the association the N-ACTION came on, which the peer holds open for it.
    report_on: Literal["new", "same"] = "new"


class DicomSettings(_Section):
    ae_title: Annotated[str, Field(min_length=1, max_length=16, pattern=r"^[ -~]*[!-~][ -~]*$")] = "CODEBRAIN"
    bind_address: str = "0.0.0.0"
    port: Annotated[int, Field(ge=0, le=65535)] = 11112
    allowed_callers: list[str] = Field(default_factory=lambda: ["STORESCU", "PACS"])
    allowed_hosts: list[str] = Field(default_factory=list)
    accept_unknown_callers: bool = False
    max_associations: Annotated[int, Field(ge=1, le=256)] = 10
    #: One host's share: at most this many associations, and as many connections still waiting to send their
    #: A-ASSOCIATE-RQ (beyond: A-ASSOCIATE-RJ "local limit exceeded", or the connection closed at once).
    max_associations_per_peer: Annotated[int, Field(ge=1, le=256)] = 5
    #: Receiver processes accepting on the one port (``receive/processes.py``): more than one puts the associations on
    #: several interpreters, so several cores share the work; the limits above stay node-wide.
    receiver_processes: Annotated[int, Field(ge=1, le=32)] = 1
    #: Seconds a new connection has to deliver its whole A-ASSOCIATE-RQ (PS3.8 9.1.4, the ARTIM timer) before it
    #: is closed; until then it is no association and does not count against max_associations.
    association_request_timeout_s: Annotated[float, Field(gt=0)] = 5.0
    #: Accept associations addressed to any called AE title (else only to ``ae_title``).
    accept_any_called_ae_title: bool = False
    #: What one instance may cost (``receive/header.py``, :class:`InstanceLimits`): the most a deflated dataset
    #: may inflate to, the deepest nesting of sequences, the longest single element.
    max_inflated_mb: Annotated[int, Field(ge=1)] = 64
    max_sequence_depth: Annotated[int, Field(ge=1, le=256)] = 16
    max_element_mb: Annotated[int, Field(ge=1)] = 512
    acse_timeout_s: Annotated[float, Field(gt=0)] = 30.0
    dimse_timeout_s: Annotated[float, Field(gt=0)] = 60.0
    network_timeout_s: Annotated[float, Field(gt=0)] = 60.0
    min_free_disk_mb: Annotated[int, Field(ge=0)] = 2048
    #: DICOM TLS (PS3.15 Annex B.9, ``codebrain_node/tls.py``): ``off``; ``both``, plain on ``port`` and TLS on
    #: ``tls_port``; ``only``, TLS on ``tls_port`` and no plain port at all.
    tls: Literal["off", "both", "only"] = "off"
    #: 2762 is IANA's dicom-tls port; 0 picks any free port.
    tls_port: Annotated[int, Field(ge=0, le=65535)] = 2762
    #: PEM certificate the receiver presents (leaf first, then intermediates) and its PEM private key.
    tls_certificate: Path | None = None
    tls_private_key: Path | None = None
    #: Passphrase of an encrypted private key (masked by ``config show``).
    tls_private_key_password: SecretStr = SecretStr("")
    #: PEM CA certificates: when set, a TLS client must present a certificate signed by one of them, or is refused.
    tls_client_ca: Path | None = None
    #: Storage Commitment SCP (PS3.4 Annex J): the requesters we report to on a new association, by AE title. A
    #: requester not listed gets its report on the association it asked on, which it must hold open.
    storage_commitment_peers: list[StorageCommitmentPeer] = Field(default_factory=list)
    #: Seconds the SCP waits for instances acknowledged before the N-ACTION to be recorded before it checks them.
    storage_commitment_settle_s: Annotated[float, Field(gt=0)] = 10.0

    @field_validator("allowed_callers")
    @classmethod
    def _ae_titles(cls, value: list[str]) -> list[str]:
        for title in value:
            if not 0 < len(title.strip()) <= 16:
                raise ValueError(f"AE title {title!r} must have 1 to 16 characters")
        return [title.strip() for title in value]

    @field_validator("storage_commitment_peers")
    @classmethod
    def _one_entry_per_peer(cls, value: list[StorageCommitmentPeer]) -> list[StorageCommitmentPeer]:
        """Peers are looked up by AE title: two entries for one title would leave one unused."""
        titles = [peer.ae_title.strip() for peer in value]
        repeated = sorted({title for title in titles if titles.count(title) > 1})
        if repeated:
            raise ValueError(f"storage_commitment_peers: {', '.join(map(repr, repeated))} listed more than once")
        return value

    @model_validator(mode="after")
    def _tls_complete(self) -> DicomSettings:
        """TLS needs a certificate and key; two listeners need two ports. (The files are read at start.)"""
        if self.tls == "off":
            return self
        missing = [name for name in ("tls_certificate", "tls_private_key") if getattr(self, name) is None]
        if missing:
            raise ValueError(f"tls = {self.tls!r} needs {' and '.join(missing)}")
        if self.tls == "both" and self.port == self.tls_port != 0:
            raise ValueError(f"tls = 'both' needs tls_port other than port ({self.port})")
        return self


class RoutingSettings(_Section):
    #: Seconds with no new instance, counted from the release of the last association that delivered one.
    quiet_period_s: Annotated[float, Field(ge=0)] = 60.0
    #: Seconds after its last instance at which a study still held by an open association is settled anyway.
    force_complete_after_s: Annotated[float, Field(gt=0)] = 900.0
    check_interval_s: Annotated[float, Field(gt=0)] = 5.0
    #: Contrasts to synthesise when missing; empty means every contrast the model knows.
    synthesize: list[Contrast] = Field(default_factory=list)
    #: Series classification rule table (TOML); empty means the shipped ``configs/classify.toml``.
    classify_rules: Path | None = None

    @field_validator("synthesize", mode="before")
    @classmethod
    def _contrast_aliases(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [Contrast.parse(item) if isinstance(item, str) else item for item in value]
        return value


#: A DICOM Application Entity title (PS3.5 §6.2, VR AE): 1 to 16 printable characters, not only spaces.
AETitle = Annotated[str, Field(min_length=1, max_length=16, pattern=r"^[ -~]*[!-~][ -~]*$")]


class DestinationSettingsBase(_Section):
    """What every ``[[export.destinations]]`` entry has. Each kind subclasses it with ``kind: Literal[...]`` and
    its own required fields, so a missing field is an error when the config is loaded, not at the first export.

    A new kind: a model here, listed in :data:`DestinationSettings`, and one file in ``export/`` that registers
    its destination class for that model (``@register(TheModel)`` in ``export/base.py``)."""

    #: What Export rows refer to; unique among the destinations.
    name: Annotated[str, Field(min_length=1)]
    kind: str
    #: Send an IHE IOCM rejection note (a Key Object Selection Document titled (113001, DCM, "Rejected for
    #: Quality Reasons")) here when a synthetic series already sent is superseded. Only for destinations that
    #: act on one (hide or delete the series it lists); elsewhere it would be stored as one more object.
    accepts_rejection_notes: bool = False


class DicomDestinationSettings(DestinationSettingsBase):
    """A DICOM peer we send to with C-STORE (PS3.4 Annex B, Storage Service Class; we are the SCU)."""

    kind: Literal["dicom"] = "dicom"
    #: The peer's (called) AE title.
    ae_title: AETitle
    host: Annotated[str, Field(min_length=1)]
    port: Annotated[int, Field(ge=1, le=65535)]
    #: DICOM TLS to this peer (PS3.15 Annex B.9): its certificate must chain to ``tls_ca_certificates`` (PEM;
    #: empty: the system's trust store) and name ``host`` (or ``tls_server_name``).
    tls: bool = False
    tls_ca_certificates: Path | None = None
    #: The name its certificate must carry (DNS name or IP address), when ``host`` is not it.
    tls_server_name: str = ""
    #: Our PEM certificate and private key, for a peer that asks for a client certificate.
    tls_certificate: Path | None = None
    tls_private_key: Path | None = None
    tls_private_key_password: SecretStr = SecretStr("")
    #: Storage Commitment SCU (PS3.4 Annex J): after each series, ask the peer to commit it (N-ACTION); the export
    #: counts as delivered only once its N-EVENT-REPORT (to our receiver, or on the same association) commits every
    #: instance, within storage_commitment_timeout_s; otherwise it is retried with back-off.
    storage_commitment: bool = False
    storage_commitment_timeout_s: Annotated[float, Field(gt=0)] = 60.0

    @model_validator(mode="after")
    def _tls_consistent(self) -> DicomDestinationSettings:
        """TLS keys without ``tls = true`` would be ignored silently: refuse them; a certificate needs its key."""
        values = {name: getattr(self, name) for name in type(self).model_fields if name.startswith("tls_")}
        given = [name for name, value in values.items() if value]  # None, "" and an empty secret are not given
        if not self.tls and given:
            raise ValueError(f"{', '.join(given)} set but tls is false")
        if (self.tls_certificate is None) != (self.tls_private_key is None):
            raise ValueError("tls_certificate and tls_private_key go together")
        return self


class FolderDestinationSettings(DestinationSettingsBase):
    """A folder the series' files are written under, as ``path/<StudyInstanceUID>/<SeriesInstanceUID>/``."""

    kind: Literal["folder"] = "folder"
    path: Path


class DicomWebDestinationSettings(DestinationSettingsBase):
    """A DICOMweb origin server we send to with STOW-RS (PS3.18 §10.5, Store Transaction; we are the user agent)."""

    kind: Literal["dicomweb"] = "dicomweb"
    #: The service's base URL, the one its ``/studies`` resource hangs off (Orthanc: ``http://host:8042/dicom-web``).
    url: Annotated[str, Field(min_length=1)]
    #: ``basic``: HTTP Basic (RFC 7617) with ``username`` and ``password``; ``bearer``: ``token`` as an OAuth 2.0
    #: bearer token (RFC 6750). Either goes in clear over ``http://``: use ``https://`` beyond the machine.
    auth: Literal["none", "basic", "bearer"] = "none"
    username: str = ""
    password: SecretStr = SecretStr("")
    token: SecretStr = SecretStr("")
    #: PEM CA certificates an ``https://`` server's certificate must chain to; empty: the CA bundle of ``certifi``
    #: (what ``requests`` trusts by default).
    tls_ca_certificates: Path | None = None
    #: Seconds to connect, and to wait for each answer.
    timeout_s: Annotated[float, Field(gt=0)] = 60.0
    #: Instances per STOW-RS request (one multipart/related body each).
    batch_size: Annotated[int, Field(ge=1)] = 32

    @field_validator("url")
    @classmethod
    def _plain_service_url(cls, value: str) -> str:
        """An http(s) URL with a host (credentials in it: refused by :meth:`_auth_complete`, which echoes no value)."""
        parts = urlsplit(value)
        if parts.netloc.rpartition("@")[0]:
            return value
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{value!r} is not an http:// or https:// URL with a host")
        if parts.query or parts.fragment:
            raise ValueError("the service URL takes no query or fragment")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _auth_complete(self) -> DicomWebDestinationSettings:
        """Each auth mode takes exactly its own credentials, so a forgotten ``auth`` line is not ignored silently."""
        if urlsplit(self.url).netloc.rpartition("@")[0]:  # shown by `config show`, logged in errors: never there
            raise ValueError("url: credentials do not go in the URL; use auth with username and password, or token")
        given = {
            "username": bool(self.username),
            "password": bool(self.password.get_secret_value()),
            "token": bool(self.token.get_secret_value()),
        }
        needed = {"none": set(), "basic": {"username", "password"}, "bearer": {"token"}}[self.auth]
        missing = sorted(name for name in needed if not given[name])
        if missing:
            raise ValueError(f"auth = {self.auth!r} needs {' and '.join(missing)}")
        extra = sorted(name for name, present in given.items() if present and name not in needed)
        if extra:
            raise ValueError(f"{', '.join(extra)} set but auth is {self.auth!r}")
        if self.tls_ca_certificates is not None and urlsplit(self.url).scheme != "https":
            raise ValueError("tls_ca_certificates set but the url is not https://")
        return self


#: One ``[[export.destinations]]`` entry: the model is chosen by ``kind`` (a pydantic discriminated union), so
#: errors name the kind, e.g. ``export.destinations.0.dicom.host: Field required``.
DestinationSettings = Annotated[
    DicomDestinationSettings | DicomWebDestinationSettings | FolderDestinationSettings, Field(discriminator="kind")
]


class ExportSettings(_Section):
    #: ``auto`` sends on completion; ``review`` waits for a radiologist's approval.
    policy: Literal["auto", "review"] = "auto"
    calling_ae_title: AETitle = "CODEBRAIN"
    max_attempts: Annotated[int, Field(ge=1)] = 8
    backoff_initial_s: Annotated[float, Field(gt=0)] = 5.0
    backoff_max_s: Annotated[float, Field(gt=0)] = 900.0
    destinations: list[DestinationSettings] = Field(default_factory=list)

    @field_validator("destinations")
    @classmethod
    def _unique_names(cls, value: list[DestinationSettingsBase]) -> list[DestinationSettingsBase]:
        """Export rows are keyed by (series, destination name): two entries of one name would be one row."""
        names = [entry.name for entry in value]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"destination names must be unique: {', '.join(map(repr, repeated))} repeated")
        return value


class ModelSettings(_Section):
    #: Empty means the weights shipped in ``weights/``.
    weights: Path | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    #: ``auto``: bf16 weights where bf16 is native (CUDA; CPUs with AVX-512 BF16 or AMX), else fp32.
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    batch_size: Annotated[int, Field(ge=1)] = 8


class EngineSettings(_Section):
    workers: Annotated[int, Field(ge=1)] = 1
    max_attempts: Annotated[int, Field(ge=1)] = 3
    poll_interval_s: Annotated[float, Field(gt=0)] = 2.0
    #: A claimed job whose worker has been silent this long is taken back.
    lease_timeout_s: Annotated[float, Field(gt=0)] = 600.0
    #: Brain extraction before the model (imaging/brain_extraction.py): "deepbet", or "off" for the head mask.
    brain_extraction: Literal["off", "deepbet"] = "deepbet"


class ReviewUser(_Section):
    """A person who may sign in to the review web app; ``password_hash`` from ``codebrain-node user hash-password``."""

    name: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._@-]+$")]
    #: Argon2id hash; empty means this user signs in only through the trusted header.
    password_hash: str = ""
    #: ``reviewer`` may approve and reject; ``viewer`` may only look.
    role: Literal["reviewer", "viewer"] = "reviewer"

    @field_validator("password_hash")
    @classmethod
    def _argon2_only(cls, value: str) -> str:
        if value and not value.startswith("$argon2"):
            raise ValueError("must be an Argon2 hash from `codebrain-node user hash-password`")
        return value


class ReviewSettings(_Section):
    enabled: bool = True
    bind_address: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8080
    #: Signs the session cookies; empty means one generated once and kept in ``<data_dir>/review-secret.key``.
    secret_key: SecretStr = SecretStr("")
    session_max_age_s: Annotated[int, Field(ge=60)] = 28800
    cookie_secure: bool = False
    users: list[ReviewUser] = Field(default_factory=list)
    #: Header carrying the signed-in user's name from an authenticating reverse proxy (e.g. X-Forwarded-User).
    trusted_user_header: str = ""
    #: Addresses or networks of the proxies whose ``trusted_user_header`` is believed.
    trusted_proxies: list[str] = Field(default_factory=list)
    #: Role of a header user who is not listed in ``users``.
    trusted_user_role: Literal["reviewer", "viewer"] = "viewer"
    #: Addresses or networks that may read /metrics without signing in (a Prometheus server).
    metrics_allowed_hosts: list[str] = Field(default_factory=list)
    #: Failed password sign-ins for one user name within ``sign_in_window_s`` that lock the name out.
    sign_in_max_failures: Annotated[int, Field(gt=0)] = 5
    #: Failed sign-ins from one client address (any names) within the window that lock the address out, so one
    #: address cannot try a few passwords on many names. Behind one of ``trusted_proxies`` the address is taken
    #: from X-Forwarded-For (the entry the proxy added), so clients are not all counted as the proxy.
    sign_in_max_failures_per_address: Annotated[int, Field(gt=0)] = 20
    #: Seconds over which failed sign-ins are counted.
    sign_in_window_s: Annotated[int, Field(gt=0)] = 900
    #: Seconds a locked-out name or address is refused without its password being checked.
    sign_in_lockout_s: Annotated[int, Field(gt=0)] = 900

    @field_validator("trusted_proxies", "metrics_allowed_hosts")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for item in value:
            ipaddress.ip_network(item, strict=False)
        return value

    @field_validator("users")
    @classmethod
    def _unique_names(cls, value: list[ReviewUser]) -> list[ReviewUser]:
        names = [user.name for user in value]
        if len(names) != len(set(names)):
            raise ValueError("user names must be unique")
        return value


class MetricsSettings(_Section):
    """The Prometheus endpoint of ``serve`` and ``worker`` (off by default: it opens a port of its own)."""

    enabled: bool = False
    bind_address: str = "0.0.0.0"
    #: ``serve`` listens here; the engine worker processes it starts on the next ports (port + 1, + 2, ...).
    port: Annotated[int, Field(ge=0, le=65535)] = 9110


class LoggingSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["text", "json"] = "text"


class Settings(_Section):
    """Every setting of the node. ``configs/node.toml`` documents each one."""

    paths: PathsSettings = Field(default_factory=PathsSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    dicom: DicomSettings = Field(default_factory=DicomSettings)
    routing: RoutingSettings = Field(default_factory=RoutingSettings)
    export: ExportSettings = Field(default_factory=ExportSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    engine: EngineSettings = Field(default_factory=EngineSettings)
    review: ReviewSettings = Field(default_factory=ReviewSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)

    #: Where each dotted key's value came from ("default", "file <path>", "env NAME"); filled by load_settings.
    sources: dict[str, str] = Field(default_factory=dict, exclude=True, repr=False)

    @property
    def database_url(self) -> str:
        url = self.database.url.get_secret_value()
        return url or f"sqlite:///{self.paths.data_dir / 'codebrain.db'}"


def load_settings(config_file: Path | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Build the settings: defaults < ``config_file`` (or ``$CODEBRAIN_CONFIG``) < ``CODEBRAIN_*`` variables."""
    environ = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    sources: dict[str, str] = {}
    if config_file is None and environ.get(CONFIG_ENV):
        config_file = Path(environ[CONFIG_ENV])
    if config_file is not None:
        file_values = _read_toml(config_file)
        raw = file_values
        for key in _flatten(file_values):
            sources[key] = f"file {config_file}"
    for name, text in environ.items():
        if not name.startswith(ENV_PREFIX) or name == CONFIG_ENV or "__" not in name:
            continue
        section, _, key = name[len(ENV_PREFIX) :].lower().partition("__")
        if not section or not key or "__" in key:
            raise ConfigError(f"{name}: expected CODEBRAIN_<SECTION>__<KEY>")
        raw.setdefault(section, {})
        if not isinstance(raw[section], dict):
            raise ConfigError(f"{name}: [{section}] is not a section")
        raw[section][key] = _parse_env_value(text)
        sources[f"{section}.{key}"] = f"env {name}"
    try:
        settings = Settings.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, sources)) from None
    settings.sources = sources
    return settings


def local_node_settings(
    settings: Settings,
    data_dir: Path,
    destination: DestinationSettings,
    *,
    quiet_period_s: float,
    callers: list[str] | None = None,
) -> Settings:
    """A copy of ``settings`` for a throw-away node of our own (demo, bench, offline): its own folder and SQLite
    database, results exported at once to ``destination``. ``callers``: it listens on a free loopback port and
    accepts only these AE titles (no disk watermark: the folder is temporary)."""
    local = settings.model_copy(deep=True)
    local.paths.data_dir = data_dir
    local.database.url = local.database.url.__class__("")
    local.routing.quiet_period_s = quiet_period_s
    local.export.policy = "auto"
    local.export.destinations = [destination]
    if callers is not None:
        local.dicom.bind_address = "127.0.0.1"
        local.dicom.port = 0
        local.dicom.allowed_callers = callers
        local.dicom.min_free_disk_mb = 0
    return local


def effective_items(settings: Settings) -> list[tuple[str, str, str]]:
    """``(dotted key, shown value, source)`` for every setting, secrets masked."""
    rows = []
    dumped = settings.model_dump(mode="json")
    for key, value in _flatten(dumped).items():
        shown = _mask(key, value, settings)
        source = settings.sources.get(key) or _source_of_parent(key, settings.sources) or "default"
        rows.append((key, shown, source))
    return rows


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def _parse_env_value(text: str) -> Any:
    """Environment values are strings; lists/tables may be given as JSON, lists also as ``a,b,c``."""
    stripped = text.strip()
    if stripped[:1] in "[{":
        try:
            return json.loads(stripped)
        except json.JSONDecodeError:
            return text
    return text


def _flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def _source_of_parent(key: str, sources: Mapping[str, str]) -> str | None:
    while "." in key:
        key = key.rsplit(".", 1)[0]
        if key in sources:
            return sources[key]
    return None


def _mask(key: str, value: Any, settings: Settings) -> str:
    if key == "database.url":
        url = settings.database.url.get_secret_value()
        if not url:
            return f"(default) {settings.database_url}"
        return _mask_url_password(url)
    if key == "review.users":  # names and roles only: password hashes stay out of `config show`
        return json.dumps([{"name": user["name"], "role": user["role"]} for user in value])
    if any(word in key for word in ("password", "secret", "token")):
        return "********" if value else ""
    return json.dumps(value) if not isinstance(value, str) else value


def _mask_url_password(url: str) -> str:
    """Hide the password of ``scheme://user:password@host/db``."""
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in credentials:
        return url
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:********@{host}"


def _describe(exc: ValidationError, sources: Mapping[str, str]) -> str:
    """One line per problem, naming the dotted key and where its value came from."""
    lines = []
    for error in exc.errors():
        key = ".".join(str(p) for p in error["loc"])  # list indices too: export.destinations.0.dicom.host
        source = sources.get(key) or _source_of_parent(key, sources)
        where = f" ({source})" if source else ""
        message = "unknown setting" if error["type"] == "extra_forbidden" else error["msg"]
        value = error.get("input")
        # a whole table or list (a destination entry, say) is not echoed: it is long and may hold a secret
        quiet = error["type"] in ("extra_forbidden", "missing") or isinstance(value, Mapping | list)
        got = "" if quiet else f", got {value!r}"
        lines.append(f"{key}{where}: {message}{got}")
    return "; ".join(lines)
