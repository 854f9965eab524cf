"""Settings: the one place that reads environment variables and the config file.

Every setting has an environment variable ``PNEUMONODE_<NAME>`` and may also be set in a TOML
config file named by ``PNEUMONODE_CONFIG_FILE`` (or ``--config`` on the command line). Precedence,
highest first: explicit arguments, environment, config file, defaults.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

__all__ = ["SHIPPED_MODEL", "ConfigFileError", "Settings", "get_settings"]

ENV_PREFIX = "PNEUMONODE_"


class ConfigFileError(ValueError):
    """The config file named in the settings is missing or unreadable."""


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
    max_associations: int = Field(default=16, ge=1, description="Concurrent associations.")
    max_instance_mb: int = Field(
        default=2048,
        ge=1,
        description="Largest object one C-STORE may bring; a larger one is deleted and "
        "answered 0xA700 (out of resources).",
    )
    network_timeout: float = Field(default=60.0, gt=0, description="Seconds of silence allowed.")
    shutdown_grace: float = Field(
        default=30.0, ge=0, description="Seconds SIGTERM waits for in-flight transfers."
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
        "allowed_peers", "destinations", "sc_destinations", "tls_destinations", mode="before"
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
            raise ValueError(f"AE title must be 1-16 printable characters, got {value!r}")
        return value

    @model_validator(mode="after")
    def _sc_destinations_are_destinations(self) -> Settings:
        unknown = [d for d in self.sc_destinations if d not in self.destinations]
        if unknown:
            raise ValueError(
                f"sc_destinations must be listed in destinations too: {', '.join(unknown)}"
            )
        return self

    @model_validator(mode="after")
    def _tls_complete(self) -> Settings:
        unknown = [d for d in self.tls_destinations if d not in self.destinations]
        if unknown:
            raise ValueError(
                f"tls_destinations must be listed in destinations too: {', '.join(unknown)}"
            )
        if self.dicom_tls_port is not None:
            if self.tls_cert_file is None or self.tls_key_file is None:
                raise ValueError("dicom_tls_port needs tls_cert_file and tls_key_file")
            if self.dicom_plaintext and self.dicom_tls_port == self.dicom_port:
                raise ValueError("dicom_tls_port must differ from dicom_port")
        elif not self.dicom_plaintext:
            raise ValueError("dicom_plaintext is off but no dicom_tls_port is set")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together")
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
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls, toml_file=path))


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
