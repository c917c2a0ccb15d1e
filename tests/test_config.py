"""Settings: secrets come from the environment only, and no message shows one."""

from __future__ import annotations

from pathlib import Path

import pytest

from outreach import db
from outreach.config import load_settings
from outreach.errors import ConfigError


def _config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    path = tmp_path / "outreach.toml"
    path.write_text(text, encoding="utf-8")
    monkeypatch.setenv("OUTREACH_CONFIG", str(path))


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ('smtp_password = "hunter2"', "smtp_password"),
        ('imap_password = "hunter2"', "imap_password"),
        ('verp_secret = "hunter2"', "verp_secret"),
        ('database_url = "postgresql://outreach:hunter2@db/outreach"', "database_url"),
        ('database_url = "postgresql://outreach@db/outreach?password=hunter2"', "database_url"),
        ('broker_url = "redis://:hunter2@127.0.0.1:6379/0"', "broker_url"),
    ],
)
def test_a_settings_file_holding_a_secret_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, line: str, key: str
) -> None:
    _config(tmp_path, monkeypatch, f'smtp_host = "smtp.example.org"\n{line}\n')

    with pytest.raises(ConfigError) as raised:
        load_settings()

    message = str(raised.value)
    assert "outreach.toml" in message and key in message
    assert f"OUTREACH_{key.upper()}" in message
    assert "hunter2" not in message


def test_the_same_secret_from_the_environment_is_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _config(tmp_path, monkeypatch, 'smtp_host = "smtp.example.org"\n')
    monkeypatch.setenv("OUTREACH_SMTP_PASSWORD", "hunter2")
    monkeypatch.setenv("OUTREACH_DATABASE_URL", "postgresql://outreach:hunter2@db/outreach")

    settings = load_settings()

    assert settings.smtp_host == "smtp.example.org"
    assert settings.smtp_password.get_secret_value() == "hunter2"
    assert "hunter2" not in repr(settings.smtp_password)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://outreach:hunter2@db/outreach",
        "postgresql://outreach@db/outreach?password=hunter2",
        "postgresql:///outreach?host=db&user=outreach&password=hunter2",
    ],
)
def test_a_url_in_a_message_shows_no_password(url: str) -> None:
    shown = db.redact(url)

    assert "hunter2" not in shown
    assert "outreach" in shown and "db" in shown
