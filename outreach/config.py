"""Settings: one typed object read from OUTREACH_* variables and an optional TOML file.

Defaults keep everything on this machine: an SQLite file and a broker folder under
OUTREACH_HOME, and SMTP to the local test mailbox (`outreach mailbox serve`) on 127.0.0.1:2525.
Secrets (the SMTP and IMAP passwords, the VERP key, a password in a URL) come only from the
environment, and are never printed: a settings file that holds one is refused.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from outreach.errors import ConfigError

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
SECRETS = ("smtp_password", "imap_password", "verp_secret")
URLS = ("database_url", "broker_url", "redis_url")  # a password in one is a secret too


def _holds_password(url: str) -> bool:
    """Whether a URL carries a password: after the user name, or as `password=` in its query."""
    parts = urlsplit(url)
    return bool(parts.password) or "password" in parse_qs(parts.query)


class _TomlWithoutSecrets(TomlConfigSettingsSource):
    """The settings file, refused whole if it holds a secret: a file is copied, shared and
    committed; the environment of the process is where a secret belongs."""

    def __call__(self) -> dict[str, Any]:
        values = super().__call__()
        found = [k for k in SECRETS if k in values]
        found += [k for k in URLS if isinstance(values.get(k), str) and _holds_password(values[k])]
        if found:
            names = ", ".join(f"OUTREACH_{k.upper()}" for k in found)
            raise ConfigError(
                f"{self.toml_file_path}: holds a secret ({', '.join(found)}); secrets are read "
                f"only from the environment: remove it from the file and set {names}"
            )
        return values


class Settings(BaseSettings):
    """Every setting, its default and its variable (`OUTREACH_` + upper-case name)."""

    model_config = SettingsConfigDict(env_prefix="OUTREACH_", extra="ignore")

    home: Path = Field(Path(".outreach"), description="Folder for the default database and broker")
    database_url: str = Field("", description="SQLAlchemy URL; default sqlite in OUTREACH_HOME")
    broker_url: str = Field("", description="Celery broker; default a folder in OUTREACH_HOME")
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 2525
    smtp_security: Literal["plain", "starttls", "ssl", ""] = Field(
        "", description="Default: plain on loopback, starttls elsewhere"
    )
    smtp_username: str = ""
    smtp_password: SecretStr = SecretStr("")
    smtp_timeout: float = Field(30.0, gt=0, description="Seconds for each SMTP step")
    smtp_ca_bundle: Path | None = None
    smtp_allow_insecure_auth: bool = False
    smtp_utf8: bool = Field(False, description="The server accepts SMTPUTF8 addresses")
    sender: str = Field("", description='Default From, e.g. "Open Dialog <office@example.org>"')
    message_id_domain: str = Field("", description="Right part of Message-IDs; default From's")
    batch_size: int = Field(50, ge=1, description="Deliveries per task, over one SMTP connection")
    worker_concurrency: int = Field(2, ge=1)
    max_attempts: int = Field(8, ge=1, description="Sends tried before a delivery fails")
    retry_base_seconds: float = Field(60.0, gt=0, description="First retry delay; doubles")
    retry_max_seconds: float = Field(4 * 3600.0, gt=0)
    visibility_timeout: int = Field(3600, ge=60, description="Seconds before Redis redelivers")
    check_deliverability: bool = Field(False, description="DNS lookups when validating emails")
    fax_gateway: str = Field(
        "", description='Fax by email, e.g. "{fax}@fax.example.net"; empty: no fax, post instead'
    )
    imap_host: str = Field("", description="The team's mailbox for bounces and replies (IMAPS)")
    imap_port: int = Field(993, description="IMAP over TLS (implicit TLS, not STARTTLS)")
    imap_username: str = ""
    imap_password: SecretStr = Field(SecretStr(""), description="From the environment only")
    imap_ca_bundle: Path | None = Field(None, description="CA file to verify the IMAP server")
    imap_timeout: float = Field(30.0, gt=0, description="Seconds for each IMAP step")
    imap_folder: str = Field("INBOX", description="Where bounces and replies arrive")
    archive_folder: str = Field(
        "", description="Where the campaign's Bcc archive copies arrive; default imap_folder"
    )
    imap_processed_folder: str = Field(
        "", description="Matched messages are moved here; empty: left in place, remembered by UID"
    )
    bounce_address: str = Field(
        "", description='VERP return path, e.g. "bounces+{token}@example.org"; empty: From'
    )
    verp_secret: SecretStr = Field(SecretStr(""), description="Key for VERP tokens (env only)")
    inbox_poll_seconds: float = Field(300, gt=0, description="How often workers read the inbox")
    presumed_delivered_after_hours: float = Field(
        48.0, gt=0, description="A sent message with no bounce after this long is delivered"
    )
    # Scheduling, throttling and recovery (the dispatcher and the workers).
    redis_url: str = Field("", description="Redis for shared rate limits; default the broker's")
    rate_per_second: float = Field(0, ge=0, description="Per SMTP account; 0 = no limit")
    rate_per_minute: int = Field(0, ge=0)
    rate_per_hour: int = Field(0, ge=0)
    rate_per_day: int = Field(0, ge=0, description="Providers cap daily sends")
    dispatch_seconds: float = Field(1.0, gt=0, description="How often the dispatcher runs")
    max_in_flight: int = Field(2000, ge=1, description="Deliveries queued in the broker at most")
    max_age_hours: float = Field(72, gt=0, description="A delivery retried no longer than this")
    sending_timeout: float = Field(600, gt=0, description="`sending` this long: `unknown`")
    queued_timeout: float = Field(300, gt=0, description="`queued` unclaimed this long: requeued")
    letters_ahead: int = Field(
        100, ge=1, description="PDF letters asked of the workers at a time, ahead of the send"
    )
    breaker_cooloff: float = Field(300, gt=0, description="Pause after a server refuses us (421)")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Environment first, then the TOML file named by OUTREACH_CONFIG (never a password)."""
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        toml = os.environ.get("OUTREACH_CONFIG")
        if toml:
            sources.append(_TomlWithoutSecrets(settings_cls, toml_file=Path(toml)))
        return tuple(sources)

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.home / 'outreach.db').resolve()}"

    @property
    def embedded_broker(self) -> bool:
        """No broker configured: the worker runs inside the outreach process."""
        return not self.broker_url

    @property
    def broker_folder(self) -> Path:
        return (self.home / "broker").resolve()

    @property
    def effective_redis_url(self) -> str:
        """Where the shared rate counters live; empty when there is no Redis (embedded)."""
        if self.redis_url:
            return self.redis_url
        return self.broker_url if self.broker_url.startswith(("redis://", "rediss://")) else ""

    @property
    def smtp_account(self) -> str:
        """What a provider's limit applies to: the login at the server."""
        return f"{self.smtp_username or '-'}@{self.smtp_host}:{self.smtp_port}"

    @property
    def effective_smtp_security(self) -> str:
        if self.smtp_security:
            return self.smtp_security
        return "plain" if self.smtp_host in LOOPBACK else "starttls"


def load_settings(**overrides: object) -> Settings:
    """Read the settings now, mapping validation errors to one clear ConfigError."""
    toml = os.environ.get("OUTREACH_CONFIG")
    if toml and not Path(toml).is_file():
        raise ConfigError(f"OUTREACH_CONFIG names {toml}, which is not a file")
    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = "; ".join(
            f"OUTREACH_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}"
            for e in exc.errors()
        )
        raise ConfigError(f"invalid settings: {problems}") from exc
    return settings


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once (workers and the CLI share this)."""
    return load_settings()
