"""Settings: the one place that reads environment variables and the config file.

Every setting has an environment variable ``PNEUMONODE_<NAME>`` and may also be set in a TOML
config file named by ``PNEUMONODE_CONFIG_FILE`` (or ``--config`` on the command line). Precedence,
highest first: explicit arguments, environment, config file, defaults.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import tomllib
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)
from pydantic_settings.exceptions import SettingsError

from pneumonode import addresses
from pneumonode.api_tokens import parse_named_tokens
from pneumonode.config_messages import PLAIN_PROBLEMS
from pneumonode.selection_rules import (
    DEFAULT_BODY_PARTS,
    DEFAULT_MODALITIES,
    DEFAULT_VIEW_POSITIONS,
    SelectionRules,
    code_strings,
)

__all__ = [
    "SHIPPED_MODEL",
    "ConfigError",
    "ConfigFileError",
    "Settings",
    "child_environment",
    "get_settings",
    "load_settings",
    "unknown_environment",
]

ENV_PREFIX = "PNEUMONODE_"
#: Environment variables of the test suite (tests/conftest.py), not settings of the node.
TEST_PREFIX = "PNEUMONODE_TEST_"
#: Settings whose values are never repeated in an error message (passwords in URLs, tokens).
SECRET_SETTINGS = frozenset(
    {"api_token", "api_tokens", "database_url", "broker_url", "webhook_urls", "webhook_secret"}
)
#: Characters that separate HL7 v2 fields and components (MSH-1 and MSH-2's defaults).
HL7_DELIMITERS = "|^~\\&"
#: The shortest webhook_secret accepted (an HMAC key of fewer bytes is easy to guess).
MIN_WEBHOOK_SECRET = 16


class ConfigError(ValueError):
    """A setting pneumonode cannot use; the message is one line that names it and the problem."""


class ConfigFileError(ConfigError):
    """The config file named in the settings is missing or unreadable."""


class SettingError(ValueError):
    """A validator's complaint about one setting (``setting``: its field name), for checks
    that look at several fields together."""

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(problem)
        self.setting = setting


#: The model that ships with pneumonode (models/ at the project root; see MODEL_CARD.md there).
SHIPPED_MODEL = Path(__file__).resolve().parents[2] / "models" / "pneumothorax-triage-lite2"


class Settings(BaseSettings):
    """Configuration of a pneumonode installation."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True)

    config_file: Path | None = Field(
        default=None, description="TOML file with any of these settings (keys as field names)."
    )
    data_dir: Path = Field(
        default=Path("pneumonode-data"),
        description="Spool, results, databases and broker files. Relative paths are resolved "
        "against the working directory.",
    )
    image_size: int = Field(
        default=1024, ge=64, le=4096, description="Side of the square model input, in pixels."
    )
    window_percentiles: tuple[float, float] = Field(
        default=(0.5, 99.5),
        description="Low/high percentiles of the pixel values used as window when a >8-bit "
        "image carries neither a VOI LUT nor a window.",
    )
    png_level: int = Field(
        default=1, ge=0, le=3, description="Deflate level of the PNGs we write, 0 (fastest) to 3."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="DEBUG, INFO, WARNING or ERROR."
    )
    log_format: Literal["text", "json"] = Field(
        default="text",
        description="text: one readable line per event; json: one JSON object per line "
        "(for log shippers).",
    )

    # --- DICOM listener -------------------------------------------------------------------
    ae_title: str = Field(default="PNEUMONODE", description="Our AE title (called AE).")
    dicom_host: str = Field(
        default="127.0.0.1",
        description="Listener bind address; 0.0.0.0 listens on every interface.",
    )
    dicom_port: int = Field(
        default=11112, ge=1, le=65535, description="Listener port (plaintext DICOM)."
    )
    allowed_peers: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Calling AE titles allowed to connect, each 'AE' or 'AE@host' "
        "(comma separated in the environment). Empty: reject everybody unless accept_any_peer.",
    )
    accept_any_peer: bool = Field(
        default=False, description="Accept any calling AE from anywhere (labs only)."
    )
    max_pdu: int = Field(
        default=262_144, ge=16_384, description="Maximum PDU size we receive, in bytes."
    )
    min_free_disk_mb: int = Field(
        default=1024,
        ge=0,
        description="Below this much free space on the spool's disk, C-STOREs are refused "
        "with 0xA700 (out of resources) and new associations are rejected.",
    )
    retention_days: int = Field(
        default=0,
        ge=0,
        description="Delete the received images and result files of instances older than this "
        "many days, hourly (the database rows and audit trail stay; unfinished or undelivered "
        "work is kept). 0 keeps everything. `pneumonode prune` does it by hand.",
    )
    max_associations: int = Field(
        default=16,
        ge=1,
        description="Concurrent negotiated associations (connections still negotiating count "
        "against max_negotiating instead).",
    )
    max_instance_mb: int = Field(
        default=2048,
        ge=1,
        description="Largest object one C-STORE may bring; a larger one is deleted and "
        "answered 0xA700 (out of resources).",
    )
    network_timeout: float = Field(
        default=60.0,
        gt=0,
        description="Seconds of silence allowed in an association (before it, artim_timeout).",
    )
    artim_timeout: float = Field(
        default=30.0,
        gt=0,
        description="Seconds a new connection has to bring its whole A-ASSOCIATE-RQ (TLS "
        "handshake included), and the peer has to close after our A-ASSOCIATE-RJ, A-RELEASE-RP "
        "or A-ABORT: PS3.8's ARTIM timer. Arriving bytes do not restart it.",
    )
    max_negotiating: int = Field(
        default=64,
        ge=1,
        description="Connections held without an association yet (awaiting their "
        "A-ASSOCIATE-RQ, or closing after a refusal); beyond it the oldest of the address "
        "holding the most is closed for the newcomer.",
    )
    max_negotiating_per_address: int = Field(
        default=8,
        ge=1,
        description="Of max_negotiating, how many one peer address may hold; its next "
        "connection closes its oldest.",
    )
    shutdown_grace: float = Field(
        default=30.0, ge=0, description="Seconds SIGTERM waits for in-flight transfers."
    )

    # --- Which received images are analysed (the rest are stored and audited as skipped) --
    analysed_modalities: Annotated[tuple[str, ...], NoDecode] = Field(
        default=DEFAULT_MODALITIES,
        description="Modalities analysed (comma separated): a CR or DX image's by its SOP "
        "class, a Secondary Capture's by its Modality (MISSING: none).",
    )
    analysed_body_parts: Annotated[tuple[str, ...], NoDecode] = Field(
        default=DEFAULT_BODY_PARTS,
        description="Body Part Examined values analysed (comma separated; MISSING: an "
        "image without one).",
    )
    analysed_view_positions: Annotated[tuple[str, ...], NoDecode] = Field(
        default=DEFAULT_VIEW_POSITIONS,
        description="View Position values analysed (comma separated; MISSING: an "
        "image without one).",
    )

    # --- DICOM TLS (PS3.15 Annex B.9, BCP 195 profile) ------------------------------------
    dicom_tls_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="A second listener port that speaks DICOM TLS (2762 is the registered "
        "one); unset: no TLS listener.",
    )
    dicom_plaintext: bool = Field(
        default=True,
        description="Listen on dicom_port without TLS; false (with dicom_tls_port): TLS only.",
    )
    tls_cert_file: Path | None = Field(
        default=None,
        description="Our certificate (PEM, chain allowed): the TLS listener's, and our client "
        "certificate when we send over TLS.",
    )
    tls_key_file: Path | None = Field(
        default=None, description="The private key of tls_cert_file (PEM, not encrypted)."
    )
    tls_ca_file: Path | None = Field(
        default=None,
        description="CA certificates (PEM) that peers' certificates must chain to, both ways; "
        "unset: the system's CAs.",
    )
    tls_require_peer_cert: bool = Field(
        default=True,
        description="The TLS listener requires a client certificate that chains to "
        "tls_ca_file (mutual authentication, as dcmtk's storescp does by default).",
    )
    tls_check_hostname: bool = Field(
        default=True,
        description="When sending over TLS, the peer's certificate must name the host we "
        "connect to.",
    )
    tls_destinations: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Destinations (of 'destinations') that are sent to over TLS (comma separated).",
    )

    # --- Sending results --------------------------------------------------------------------
    destinations: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Where results are sent, each 'AE@host:port' (comma separated).",
    )
    send_max_attempts: int = Field(
        default=6, ge=1, description="Attempts before a delivery is dead-lettered."
    )
    send_backoff_seconds: float = Field(
        default=10.0, gt=0, description="First retry delay; doubles with each attempt."
    )
    send_backoff_max_seconds: float = Field(default=600.0, gt=0, description="Longest retry delay.")
    sc_destinations: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Destinations (of 'destinations') that also get a Secondary Capture with the "
        "finding burned in, for viewers that cannot show a SEG (comma separated).",
    )
    result_label: str = Field(
        default="not for clinical use",
        max_length=40,
        description="What SeriesDescription and content labels say about our results' use.",
    )

    # --- Alerts: HL7 v2 and webhooks -------------------------------------------------------
    notify: Literal["positive", "all"] = Field(
        default="positive",
        description="Which results raise an alert (HL7 ORU and webhook): positive (a "
        "pneumothorax found) or all. A re-run of an alerted result is always sent again, as a "
        "correction.",
    )
    hl7_destinations: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="HL7 v2 receivers (RIS, interface engine) that get an ORU^R01 (v2.5.1) over "
        "MLLP for each alerted result, each 'host:port' (comma separated).",
    )
    hl7_sending_application: str = Field(
        default="PNEUMONODE",
        description="MSH-3 Sending Application of our HL7 messages (1-20 characters).",
    )
    hl7_sending_facility: str | None = Field(
        default=None,
        description="MSH-4 Sending Facility of our HL7 messages (1-20 characters); unset: none.",
    )
    webhook_urls: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="URLs that get a signed JSON POST for each alerted result (http or https, "
        "comma separated).",
    )
    webhook_secret: SecretStr | None = Field(
        default=None,
        description="Key of the HMAC-SHA256 signature in each webhook's "
        "X-Pneumonode-Signature-256 header (at least 16 characters); required with "
        "webhook_urls.",
    )
    alert_timeout: float = Field(
        default=10.0,
        gt=0,
        description="Seconds an alert waits to connect, then for the HL7 ACK or the webhook's "
        "HTTP answer, before the attempt counts as failed (retried as deliveries are).",
    )
    public_url: str | None = Field(
        default=None,
        description="The web page and API as users reach them, for the links in webhooks "
        "(e.g. https://pneumonode.hospital.example); default http://<api_host>:<api_port>.",
    )

    # --- Worker and queue -------------------------------------------------------------------
    model_path: Path | None = Field(
        default=None,
        description="Checkpoint folder (ours: config.json + weights) or a seed best_model.pth; "
        "default: the model shipped in models/.",
    )
    broker_url: str | None = Field(
        default=None,
        description="Celery broker; default: the embedded broker (kombu's filesystem "
        "transport in <data_dir>/broker, no server). Scale out: redis://host:6379/0",
    )
    job_lease_seconds: float = Field(
        default=60.0,
        gt=0,
        description="A running job whose worker gives no sign of life for this long is "
        "re-queued (a worker killed mid-job); workers renew the lease of what they run every "
        "quarter of it. A queued job waits five leases before it is published again.",
    )
    dispatch_interval: float = Field(
        default=0.5,
        gt=0,
        description="Seconds between looks for received images not yet queued (expired leases "
        "and lost messages are looked for every twelfth of a lease).",
    )

    # --- Inference ------------------------------------------------------------------------
    device: str = Field(
        default="auto", description="auto (a CUDA GPU when there is one), cpu, cuda or cuda:N"
    )
    inference_backend: Literal["auto", "torch", "onnxruntime", "openvino"] = Field(
        default="auto",
        description="auto: torch on CUDA, else the fastest installed CPU engine",
    )
    inference_precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        default="auto", description="auto: bf16 where the hardware has it natively, else fp32"
    )
    operating_point: float | None = Field(
        default=None,
        gt=0,
        lt=1,
        description="A film is called positive when its calibrated probability is at least "
        "this; default: the model's own (chosen on validation for sensitivity >= 0.90, in its "
        "config.json). Lower finds more, with more false alarms.",
    )

    # --- HTTP API ---------------------------------------------------------------------------
    api_host: str = Field(default="127.0.0.1", description="API bind address.")
    api_port: int = Field(default=8000, ge=1, le=65535, description="API and web page port.")
    api_token: SecretStr | None = Field(
        default=None,
        description="Bearer token of the API. Unset: one is generated at first start, printed "
        "once and kept in <data_dir>/api-token.",
    )
    api_tokens: SecretStr | None = Field(
        default=None, description="Named API tokens, name:token,...; api_token is 'default'."
    )
    dev_mode: bool = Field(
        default=False, description="Development: allows a well-known API token (never in use)."
    )
    max_upload_mb: int = Field(
        default=512, ge=1, description="Largest DICOM file the API's upload accepts."
    )
    upload_rate_per_minute: int = Field(
        default=120,
        ge=1,
        description="Uploads one client address may make per minute; more get HTTP 429.",
    )

    # --- Database -------------------------------------------------------------------------
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL; default SQLite at <data_dir>/pneumonode.sqlite3. "
        "PostgreSQL: postgresql://user@host:5432/db",
    )

    @field_validator("window_percentiles")
    @classmethod
    def _ordered_percentiles(cls, value: tuple[float, float]) -> tuple[float, float]:
        low, high = value
        if not 0.0 <= low < high <= 100.0:
            raise ValueError(f"need 0 <= low < high <= 100, got {low}, {high}")
        return value

    @field_validator(
        "allowed_peers",
        "destinations",
        "sc_destinations",
        "tls_destinations",
        "hl7_destinations",
        "webhook_urls",
        "analysed_modalities",
        "analysed_body_parts",
        "analysed_view_positions",
        mode="before",
    )
    @classmethod
    def _comma_list(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                try:
                    return json.loads(text)
                except json.JSONDecodeError:
                    raise ValueError(f"not a JSON list: {text!r}") from None
            return [item.strip() for item in text.split(",") if item.strip()]
        return value

    @field_validator("ae_title")
    @classmethod
    def _valid_ae_title(cls, value: str) -> str:
        value = value.strip()
        if not 1 <= len(value) <= 16 or "\\" in value or not value.isprintable():
            raise ValueError(
                f"AE title must be 1-16 printable characters without a backslash, got {value!r}"
                f" ({len(value)} characters)"
            )
        return value

    @field_validator("destinations")
    @classmethod
    def _valid_destinations(cls, value: list[str]) -> list[str]:
        for text in value:  # the parser `pneumonode echo` and the sender use
            addresses.parse_destination(text)
        return value

    @field_validator("analysed_modalities", "analysed_body_parts", "analysed_view_positions")
    @classmethod
    def _valid_selection(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        """DICOM code strings, upper case, each once (the rule that selection applies)."""
        return code_strings(value)

    @field_validator("hl7_destinations")
    @classmethod
    def _valid_hl7_destinations(cls, value: list[str]) -> list[str]:
        """Each 'host:port', with the parser the HL7 sender uses."""
        try:
            return [str(addresses.parse_mllp_target(text)) for text in value]
        except addresses.AlertTargetError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("webhook_urls")
    @classmethod
    def _valid_webhook_urls(cls, value: list[str]) -> list[str]:
        """Absolute http(s) URLs; a message names a URL without its path (it may be secret)."""
        try:
            return [addresses.check_webhook_url(text) for text in value]
        except addresses.AlertTargetError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("webhook_secret")
    @classmethod
    def _strong_webhook_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < MIN_WEBHOOK_SECRET:
            raise ValueError(
                f"must be at least {MIN_WEBHOOK_SECRET} characters (e.g. the output of "
                "`openssl rand -hex 32`)"
            )
        return value

    @field_validator("api_tokens")
    @classmethod
    def _valid_api_tokens(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:  # the ValueError names an entry by its name, not its token
            parse_named_tokens(value.get_secret_value())
        return value

    @field_validator("hl7_sending_application", "hl7_sending_facility")
    @classmethod
    def _valid_hl7_name(cls, value: str | None) -> str | None:
        """An HD namespace ID: 1-20 printable characters, none of HL7's delimiters."""
        if value is None:
            return value
        text = value.strip()
        if not 1 <= len(text) <= 20 or not text.isprintable():
            raise ValueError(f"must be 1-20 printable characters, got {value!r}")
        if any(c in HL7_DELIMITERS for c in text):
            raise ValueError(f"must not contain HL7 delimiters ({HL7_DELIMITERS}), got {value!r}")
        return text

    @field_validator("public_url")
    @classmethod
    def _valid_public_url(cls, value: str | None) -> str | None:
        if not value:
            return None
        from urllib.parse import urlsplit

        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"expected http(s)://host[:port][/path], got {value!r}")
        return value.strip().rstrip("/")

    @field_validator("allowed_peers")
    @classmethod
    def _valid_peers(cls, value: list[str]) -> list[str]:
        """Each 'AE' or 'AE@host', with the listener's parser; the host is resolved when the
        listener starts, not whenever the settings are read."""
        for text in value:
            ae_title, sep, host = text.strip().partition("@")
            try:
                addresses.PeerRule.parse(ae_title)  # no host: nothing to resolve
            except ValueError:
                raise ValueError(
                    f"allowed peer {text!r}: AE title must be 1-16 printable characters "
                    "without a backslash"
                ) from None
            if sep and not host.strip().strip("[]"):
                raise ValueError(f"allowed peer {text!r}: no host after '@' (AE or AE@host)")
        return value

    @field_validator("device")
    @classmethod
    def _valid_device(cls, value: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value.strip()):
            raise ValueError(f"expected auto, cpu, cuda or cuda:N, got {value!r}")
        return value.strip()

    @field_validator("database_url")
    @classmethod
    def _valid_database_url(cls, value: str | None) -> str | None:
        if not value:
            return value
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError, NoSuchModuleError

        try:
            url = make_url(value)
        except (ArgumentError, ValueError):  # their messages quote the URL, password and all
            raise ValueError(
                "not a database URL (e.g. postgresql://user@host:5432/db or sqlite:///path)"
            ) from None
        try:
            url.get_dialect()
        except NoSuchModuleError:
            raise ValueError(
                f"unknown database kind {url.drivername!r} (postgresql://... or sqlite:///...)"
            ) from None
        return value

    @field_validator("broker_url")
    @classmethod
    def _valid_broker_url(cls, value: str | None) -> str | None:
        if not value:
            return value
        from kombu.transport import TRANSPORT_ALIASES

        scheme, sep, _ = value.partition("://")
        if not sep or scheme.partition("+")[0] not in TRANSPORT_ALIASES:
            raise ValueError(
                "not a broker URL Celery knows (e.g. redis://host:6379/0 or amqp://host//)"
            )
        return value

    @model_validator(mode="after")
    def _sc_destinations_are_destinations(self) -> Settings:
        unknown = [d for d in self.sc_destinations if d not in self.destinations]
        if unknown:
            raise SettingError(
                "sc_destinations",
                f"sc_destinations must be listed in destinations too: {', '.join(unknown)}",
            )
        return self

    @model_validator(mode="after")
    def _tls_complete(self) -> Settings:
        unknown = [d for d in self.tls_destinations if d not in self.destinations]
        if unknown:
            raise SettingError(
                "tls_destinations",
                f"tls_destinations must be listed in destinations too: {', '.join(unknown)}",
            )
        if self.dicom_tls_port is not None:
            if self.tls_cert_file is None or self.tls_key_file is None:
                raise SettingError(
                    "dicom_tls_port", "dicom_tls_port needs tls_cert_file and tls_key_file"
                )
            if self.dicom_plaintext and self.dicom_tls_port == self.dicom_port:
                raise SettingError("dicom_tls_port", "dicom_tls_port must differ from dicom_port")
        elif not self.dicom_plaintext:
            raise SettingError(
                "dicom_plaintext", "dicom_plaintext is off but no dicom_tls_port is set"
            )
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            missing, given = (
                ("tls_key_file", "tls_cert_file")
                if self.tls_key_file is None
                else ("tls_cert_file", "tls_key_file")
            )
            raise SettingError(missing, f"missing: {given} is set, and the two go together")
        return self

    @model_validator(mode="after")
    def _webhooks_signed(self) -> Settings:
        if self.webhook_urls and self.webhook_secret is None:
            raise SettingError(
                "webhook_secret",
                "webhook_urls are set but webhook_secret is not: every webhook is signed "
                "(e.g. PNEUMONODE_WEBHOOK_SECRET=$(openssl rand -hex 32))",
            )
        return self

    @model_validator(mode="after")
    def _absolute_data_dir(self) -> Settings:
        object.__setattr__(self, "data_dir", self.data_dir.expanduser().absolute())
        return self

    @property
    def spool_dir(self) -> Path:
        """Received DICOM files: ``spool/<StudyUID>/<SOPInstanceUID>.dcm``."""
        return self.data_dir / "spool"

    @property
    def results_dir(self) -> Path:
        """What we made: ``results/<StudyUID>/<SOPInstanceUID>/`` (SEG, SR, SC, PNGs)."""
        return self.data_dir / "results"

    @property
    def public_base_url(self) -> str:
        """Where users reach the web page and API (``public_url``, else the API's address;
        a wildcard bind address becomes 127.0.0.1)."""
        if self.public_url:
            return self.public_url
        host = "127.0.0.1" if self.api_host in ("0.0.0.0", "::", "") else self.api_host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.api_port}"

    @property
    def selection(self) -> SelectionRules:
        """Which received images are analysed (``analysed_*``), for ``selection.skip_reason``."""
        return SelectionRules(
            modalities=self.analysed_modalities,
            body_parts=self.analysed_body_parts,
            view_positions=self.analysed_view_positions,
        )

    @property
    def broker(self) -> str:
        """The Celery broker URL in use (``filesystem://``: the embedded one in the data dir)."""
        return self.broker_url or "filesystem://"

    @property
    def model(self) -> Path:
        """The checkpoint the worker loads: ``model_path``, else the shipped model."""
        if self.model_path is not None:
            return self.model_path.expanduser().absolute()
        return SHIPPED_MODEL

    @property
    def database(self) -> str:
        """The database URL in use (the SQLite default lives in the data dir)."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.data_dir / 'pneumonode.sqlite3'}"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        init_values: dict[str, Any] = init_settings()
        env_values: dict[str, Any] = env_settings()
        config_file = init_values.get("config_file") or env_values.get("config_file")
        if not config_file:
            return (init_settings, env_settings)
        path = Path(config_file).expanduser()
        if not path.is_file():
            raise ConfigFileError(f"config file {path} does not exist or is not a file")
        try:
            toml = TomlConfigSettingsSource(settings_cls, toml_file=path)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigFileError(f"config file {path}: not valid TOML ({exc})") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigFileError(f"config file {path}: cannot be read ({exc})") from None
        return (init_settings, env_settings, toml)

    def name_of(self, setting: str) -> str:
        """How the operator set ``setting``: its environment variable, or its key in the
        config file when the file set it (for messages that name a setting)."""
        return _name_of(setting, self.config_file)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()


def load_settings(config_file: Path | None = None) -> Settings:
    """The settings, or :class:`ConfigError` whose message is one line: the setting, as the
    operator wrote it (environment variable or config file key), and what is wrong with it."""
    try:
        return Settings(config_file=config_file) if config_file else Settings()
    except ValidationError as exc:
        in_file = config_file or _environment_value("config_file")
        raise ConfigError(_describe(exc, Path(in_file) if in_file else None)) from None
    except SettingsError as exc:  # a value the environment source cannot decode (JSON)
        found = re.search(r'field "(\w+)"', str(exc))
        where = _env_name(found.group(1)) if found else "an environment variable"
        raise ConfigError(f"{where}: not valid JSON") from None


def unknown_environment() -> Iterator[str]:
    """A warning for each ``PNEUMONODE_*`` environment variable that is not a setting (and so
    is ignored), with the nearest real name."""
    known = [name.upper() for name in Settings.model_fields]
    for key in sorted(_unknown_environment_names()):
        near = difflib.get_close_matches(key.upper().removeprefix(ENV_PREFIX), known, n=1)
        hint = f"; did you mean {ENV_PREFIX}{near[0]}?" if near else " (see docs/configuration.md)"
        yield f"environment variable {key} is not a pneumonode setting and is ignored{hint}"


def child_environment() -> dict[str, str]:
    """The environment for a child pneumonode process: this one's, without the ``PNEUMONODE_*``
    variables that are not settings (this process has warned of them already)."""
    unknown = _unknown_environment_names()
    return {key: value for key, value in os.environ.items() if key not in unknown}


def _unknown_environment_names() -> set[str]:
    known = {_env_name(name) for name in Settings.model_fields}
    return {
        key
        for key in os.environ
        if key.upper().startswith(ENV_PREFIX)
        and key.upper() not in known
        and not key.upper().startswith(TEST_PREFIX)
    }


def _env_name(setting: str) -> str:
    return f"{ENV_PREFIX}{setting.upper()}"


def _environment_value(setting: str) -> str | None:
    """The environment's value of ``setting`` (names are case-insensitive, as for Settings)."""
    wanted = _env_name(setting)
    return next((v for k, v in os.environ.items() if k.upper() == wanted), None)


def _name_of(setting: str, config_file: Path | None) -> str:
    if setting in Settings.model_fields and _environment_value(setting) is not None:
        return _env_name(setting)  # the environment beats the file
    if config_file is not None:
        return f"{setting} in {config_file}"
    return _env_name(setting)


def _describe(exc: ValidationError, config_file: Path | None) -> str:
    """One line for a validation error: each problem as ``NAME: what is wrong``."""
    problems = [_problem(error, config_file) for error in exc.errors(include_url=False)]
    more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
    return "; ".join(problems[:3]) + more


def _problem(error: ErrorDetails, config_file: Path | None) -> str:
    kind, ctx = error["type"], error.get("ctx") or {}
    cause = ctx.get("error")
    setting = str(error["loc"][0]) if error["loc"] else getattr(cause, "setting", None)
    if kind == "extra_forbidden":
        fields = list(Settings.model_fields)
        near = difflib.get_close_matches(str(setting), fields, n=1, cutoff=0.6)
        hint = f"; did you mean {near[0]}?" if near else ""
        where = f"{setting} in {config_file}" if config_file else str(setting)
        return f"{where}: not a setting{hint}"
    if kind in ("value_error", "assertion_error") and cause is not None:
        what = str(cause)
    else:
        try:
            what = PLAIN_PROBLEMS[kind].format(**ctx)
        except (KeyError, IndexError):
            what = error["msg"][:1].lower() + error["msg"][1:]
        given = error.get("input")
        if setting not in SECRET_SETTINGS and isinstance(given, str | int | float):
            shown = repr(given)
            what += f", got {shown if len(shown) <= 80 else shown[:76] + '...'}"
    if setting is None:
        return what
    return f"{_name_of(setting, config_file)}: {what}"
