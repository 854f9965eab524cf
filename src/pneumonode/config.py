"""Settings: the one place that reads environment variables and the config file.

Every setting has an environment variable ``PNEUMONODE_<NAME>`` and may also be set in a TOML
config file named by ``PNEUMONODE_CONFIG_FILE`` (or ``--config`` on the command line). Precedence,
highest first: explicit arguments, environment, config file, defaults.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

__all__ = ["ConfigFileError", "Settings", "get_settings"]

ENV_PREFIX = "PNEUMONODE_"


class ConfigFileError(ValueError):
    """The config file named in the settings is missing or unreadable."""


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
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("window_percentiles")
    @classmethod
    def _ordered_percentiles(cls, value: tuple[float, float]) -> tuple[float, float]:
        low, high = value
        if not 0.0 <= low < high <= 100.0:
            raise ValueError(f"need 0 <= low < high <= 100, got {low}, {high}")
        return value

    @model_validator(mode="after")
    def _absolute_data_dir(self) -> Settings:
        object.__setattr__(self, "data_dir", self.data_dir.expanduser().absolute())
        return self

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
