"""Settings: environment, config file, precedence and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from pneumonode.config import ConfigFileError, Settings


def test_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("PNEUMONODE_DATA_DIR")
    monkeypatch.chdir(tmp_path)
    settings = Settings()
    assert settings.data_dir == tmp_path / "pneumonode-data"
    assert settings.image_size == 1024
    assert settings.window_percentiles == (0.5, 99.5)


def test_environment_with_prefix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PNEUMONODE_IMAGE_SIZE", "512")
    monkeypatch.setenv("PNEUMONODE_WINDOW_PERCENTILES", "[1, 99]")
    settings = Settings()
    assert settings.image_size == 512
    assert settings.window_percentiles == (1.0, 99.0)
    assert settings.data_dir == tmp_path / "pneumonode-data"


def test_lists_and_inference_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PNEUMONODE_ALLOWED_PEERS", "PACS@10.0.0.5, MODALITY")
    monkeypatch.setenv("PNEUMONODE_DESTINATIONS", '["PACS@10.0.0.5:104"]')
    monkeypatch.setenv("PNEUMONODE_INFERENCE_BACKEND", "onnxruntime")
    settings = Settings()
    assert settings.allowed_peers == ["PACS@10.0.0.5", "MODALITY"]
    assert settings.destinations == ["PACS@10.0.0.5:104"]
    assert settings.inference_backend == "onnxruntime" and settings.device == "auto"


def test_config_file_and_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "pneumonode.toml"
    config.write_text('image_size = 768\ndata_dir = "/srv/pneumonode"\nlog_level = "DEBUG"\n')
    monkeypatch.setenv("PNEUMONODE_CONFIG_FILE", str(config))
    monkeypatch.delenv("PNEUMONODE_DATA_DIR")
    settings = Settings()
    assert settings.image_size == 768 and settings.data_dir == Path("/srv/pneumonode")
    monkeypatch.setenv("PNEUMONODE_IMAGE_SIZE", "640")  # environment beats the file
    assert Settings().image_size == 640


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigFileError, match="does not exist"):
        Settings(config_file=tmp_path / "missing.toml")


def test_unknown_key_in_config_file_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("imagesize = 768\n")
    with pytest.raises(ValidationError, match="imagesize"):
        Settings(config_file=config)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("PNEUMONODE_IMAGE_SIZE", "10"),
        ("PNEUMONODE_WINDOW_PERCENTILES", "[99, 1]"),
        ("PNEUMONODE_LOG_LEVEL", "LOUD"),
        ("PNEUMONODE_INFERENCE_BACKEND", "tensorrt"),
        ("PNEUMONODE_AE_TITLE", "MUCH_TOO_LONG_AE_TITLE"),
        ("PNEUMONODE_ALLOWED_PEERS", '["unterminated"'),
    ],
)
def test_invalid_values(monkeypatch: pytest.MonkeyPatch, key: str, value: str) -> None:
    monkeypatch.setenv(key, value)
    with pytest.raises(ValidationError):
        Settings()
