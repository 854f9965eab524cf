"""Settings: environment, config file, precedence and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from pneumonode.config import (
    ConfigError,
    ConfigFileError,
    Settings,
    child_environment,
    load_settings,
    unknown_environment,
)


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


def test_load_settings_names_each_setting_as_the_operator_wrote_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """One line, ``NAME: problem`` for each: the environment variable, or the config file's key
    where the file set it; pydantic's own report (types, inputs, URLs) never shows."""
    config = tmp_path / "pneumonode.toml"
    config.write_text('image_size = 10\nlog_level = "LOUD"\n')
    monkeypatch.setenv("PNEUMONODE_LOG_LEVEL", "LOUDER")  # the environment beats the file
    monkeypatch.setenv("PNEUMONODE_DESTINATIONS", "PACS@10.0.0.5:104, ORTHANC@127.0.0.1")
    with pytest.raises(ConfigError) as refused:
        load_settings(config)
    problems = str(refused.value).split("; ")
    assert problems == [
        f"image_size in {config}: must be at least 64, got 10",
        "PNEUMONODE_LOG_LEVEL: must be 'DEBUG', 'INFO', 'WARNING' or 'ERROR', got 'LOUDER'",
        "PNEUMONODE_DESTINATIONS: destination 'ORTHANC@127.0.0.1': expected AE@host:port",
    ]


def test_load_settings_never_repeats_a_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PNEUMONODE_DATABASE_URL", "postgresql://node:s3cret@db:notaport/x")
    monkeypatch.setenv("PNEUMONODE_BROKER_URL", "redis:/s3cret@broker")
    with pytest.raises(ConfigError) as refused:
        load_settings()
    assert "s3cret" not in str(refused.value)
    assert "PNEUMONODE_DATABASE_URL: not a database URL" in str(refused.value)
    assert "PNEUMONODE_BROKER_URL: not a broker URL" in str(refused.value)


def test_a_missing_config_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("image_size = \n")
    with pytest.raises(ConfigError, match=f"config file {broken}: not valid TOML"):
        load_settings(broken)


def test_model_level_checks_name_their_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PNEUMONODE_DESTINATIONS", "PACS@10.0.0.5:104")
    monkeypatch.setenv("PNEUMONODE_SC_DESTINATIONS", "VIEWER@10.0.0.6:104")
    with pytest.raises(ConfigError, match=r"^PNEUMONODE_SC_DESTINATIONS: sc_destinations must"):
        load_settings()


def test_unknown_environment_variables_are_named_with_the_nearest_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PNEUMONODE_AETITLE", "PACS")
    monkeypatch.setenv("PNEUMONODE_WHATEVER", "1")
    monkeypatch.setenv("PNEUMONODE_TEST_SOMETHING", "1")  # the test suite's own
    assert list(unknown_environment()) == [
        "environment variable PNEUMONODE_AETITLE is not a pneumonode setting and is ignored; "
        "did you mean PNEUMONODE_AE_TITLE?",
        "environment variable PNEUMONODE_WHATEVER is not a pneumonode setting and is ignored "
        "(see docs/configuration.md)",
    ]
    children = child_environment()  # child processes do not warn again
    assert "PNEUMONODE_AETITLE" not in children and "PNEUMONODE_TEST_SOMETHING" in children
    assert children["PNEUMONODE_DATA_DIR"]
