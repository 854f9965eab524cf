"""Alert settings are checked when read: one line naming the setting, never a secret."""

from __future__ import annotations

import pytest

from pneumonode.config import ConfigError, load_settings


@pytest.mark.parametrize(
    ("variables", "problem"),
    [
        (
            {"PNEUMONODE_HL7_DESTINATIONS": "ris.example:2575, ris2.example"},
            "PNEUMONODE_HL7_DESTINATIONS: HL7 destination 'ris2.example': expected host:port",
        ),
        (
            {"PNEUMONODE_HL7_DESTINATIONS": "ris.example:70000"},
            "PNEUMONODE_HL7_DESTINATIONS: HL7 destination 'ris.example:70000': port 70000 is "
            "not 1-65535",
        ),
        (
            {"PNEUMONODE_WEBHOOK_URLS": "ftp://hooks.example/T0/B0/s3cret"},
            "PNEUMONODE_WEBHOOK_URLS: webhook URL ftp://hooks.example/…: must start with "
            "http:// or https://",
        ),
        (
            {"PNEUMONODE_WEBHOOK_URLS": "https://hooks.example/T0/B0/s3cret"},
            "PNEUMONODE_WEBHOOK_SECRET: webhook_urls are set but webhook_secret is not: every "
            "webhook is signed (e.g. PNEUMONODE_WEBHOOK_SECRET=$(openssl rand -hex 32))",
        ),
        (
            {"PNEUMONODE_WEBHOOK_SECRET": "s3cret"},
            "PNEUMONODE_WEBHOOK_SECRET: must be at least 16 characters (e.g. the output of "
            "`openssl rand -hex 32`)",
        ),
        (
            {"PNEUMONODE_NOTIFY": "negative"},
            "PNEUMONODE_NOTIFY: must be 'positive' or 'all', got 'negative'",
        ),
        (
            {"PNEUMONODE_HL7_SENDING_APPLICATION": "PNEUMO^NODE"},
            "PNEUMONODE_HL7_SENDING_APPLICATION: must not contain HL7 delimiters (|^~\\&), got "
            "'PNEUMO^NODE'",
        ),
        (
            {"PNEUMONODE_HL7_SENDING_FACILITY": "A" * 21},
            f"PNEUMONODE_HL7_SENDING_FACILITY: must be 1-20 printable characters, got '{'A' * 21}'",
        ),
        (
            {"PNEUMONODE_PUBLIC_URL": "pneumonode.example"},
            "PNEUMONODE_PUBLIC_URL: expected http(s)://host[:port][/path], got "
            "'pneumonode.example'",
        ),
        (
            {"PNEUMONODE_ALERT_TIMEOUT": "0"},
            "PNEUMONODE_ALERT_TIMEOUT: must be more than 0.0, got '0'",
        ),
    ],
)
def test_a_bad_alert_setting_is_one_line_naming_it(
    monkeypatch: pytest.MonkeyPatch, variables: dict[str, str], problem: str
) -> None:
    for key, value in variables.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError) as refused:
        load_settings()
    assert str(refused.value) == problem
    assert "s3cret" not in str(refused.value)


def test_alert_settings_as_an_operator_writes_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PNEUMONODE_HL7_DESTINATIONS", "ris.example:2575, [::1]:2576")
    monkeypatch.setenv("PNEUMONODE_WEBHOOK_URLS", "https://hooks.example/a, http://10.0.0.9:8080/b")
    monkeypatch.setenv("PNEUMONODE_WEBHOOK_SECRET", "0123456789abcdef0123")
    monkeypatch.setenv("PNEUMONODE_PUBLIC_URL", "https://pneumonode.example/")
    monkeypatch.setenv("PNEUMONODE_API_HOST", "0.0.0.0")
    settings = load_settings()
    assert settings.hl7_destinations == ["ris.example:2575", "[::1]:2576"]
    assert settings.webhook_urls == ["https://hooks.example/a", "http://10.0.0.9:8080/b"]
    assert settings.notify == "positive"
    assert settings.public_base_url == "https://pneumonode.example"
    monkeypatch.delenv("PNEUMONODE_PUBLIC_URL")
    assert load_settings().public_base_url == "http://127.0.0.1:8000"
