"""All configuration, read once from the environment (and `.env`).

Secrets are `SecretStr` so that printing or logging a Settings object never shows them; the
`secret_values()` list feeds the log scrubber.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from redis.connection import parse_url

from shared.timeutil import parse_wire
from shared.validation import describe, message_of


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    # 旺店通 through the Qimen gateway
    wdt_qimen_url: str = "https://hu3cgwt0tc.api.taobao.com/router/qm"
    wdt_app_key: str = ""
    wdt_app_secret: SecretStr = SecretStr("")
    wdt_sid: str = ""
    wdt_target_app_key: str = "21363512"
    wdt_page_size: int = Field(100, ge=1, le=100)
    wdt_rate_per_minute: float = Field(60, gt=0, description="calls a minute for the whole tenant")

    # 用友BIP
    bip_tenant_id: str = ""
    bip_app_key: str = ""
    bip_app_secret: SecretStr = SecretStr("")
    bip_discovery_url: str = "https://apigateway.yonyoucloud.com/open-auth/dataCenter/getGatewayAddress"
    bip_gateway_url: str = ""
    bip_token_url: str = ""
    bip_rate_per_second: float = Field(20, gt=0, description="save calls a second for the whole tenant")
    bip_token_margin_s: int = Field(300, ge=0, description="renew the token this long before it expires")

    # HTTP
    http_connect_timeout_s: float = 5.0
    http_read_timeout_s: float = 30.0

    # Redis and Celery
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_prefix: str = "sos"
    redis_ca_certs: str = Field("", description="CA bundle to verify a rediss:// server; empty = the system's")
    # Longer than any task can run: a message unacked for this long is handed to another worker.
    broker_visibility_timeout_s: int = 3600
    task_time_limit_s: int = 300
    worker_pool: str = "prefork"
    worker_concurrency: int = 8

    # The producer
    poll_interval_s: float = 60.0
    lookback_s: int = Field(3600, ge=0)
    settle_s: int = Field(60, ge=0, description="stay this far behind now: WDT may still be writing")
    initial_since: str = Field("", description="Beijing time the first poll starts from; empty = now − 1 day")
    slice_days: float = Field(1.0, gt=0, le=30)
    # Renewed after every page; a poll that dies blocks the next one for at most this long.
    poll_lock_ttl_s: float = Field(120.0, gt=0)
    state_ttl_days: int = Field(60, ge=1, description="how long done/queued marks live; must outlive the lookback")

    # Retries
    max_attempts: int = Field(6, ge=1)
    retry_backoff_base_s: float = 2.0
    retry_backoff_max_s: float = 300.0

    mapping_file: Path = Path("mapping.toml")
    log_format: str = "text"
    log_level: str = "INFO"

    # Operating it
    metrics_port: int = Field(0, ge=0, le=65535, description="Prometheus /metrics of worker and beat; 0 = off")
    metrics_address: str = "0.0.0.0"
    status_max_lag_s: int = Field(900, gt=0, description="`status` needs attention when the cursor lags more")

    # Poison messages (shared/poison.py): a queue entry larger than this is quarantined undecoded.
    # Far above any real stockout (a thousand lines is ~1 MB), low enough that a runaway entry
    # never reaches kombu's and Celery's decoding.
    max_message_bytes: int = Field(8 * 1024 * 1024, ge=64 * 1024, description="largest queue entry a worker decodes")

    # Start-up checks of values that can never work (the CLI adds the ones that need the network).
    @field_validator("initial_since")
    @classmethod
    def _beijing_time(cls, value: str) -> str:
        if value:
            try:
                parsed = parse_wire(value)
            except ValueError:
                parsed = None
            if parsed is None:
                raise ValueError(
                    "expected a Beijing time 'yyyy-MM-dd HH:mm:ss' (or 'yyyy-MM-dd'), or empty for now − 1 day"
                )
        return value

    @field_validator("slice_days")
    @classmethod
    def _a_minute_at_least(cls, value: float) -> float:
        if value < 1 / 1440:
            raise ValueError(f"under a minute (1 minute = {1 / 1440:.6f} days): a day would take "
                             f"{round(1 / value):,} WDT calls at least")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("expected redis://host:port/db, rediss://… (TLS) or unix://…")
        try:
            options = parse_url(value)
        except ValueError as err:
            raise ValueError(f"not a Redis URL: {err}") from None
        if value.startswith(("redis://", "rediss://")) and not options.get("host"):
            raise ValueError("no host in the URL: expected redis://host:port/db")
        return value

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.lookback_s >= self.state_ttl_days * 86400:
            raise ValueError(
                f"STATE_TTL_DAYS={self.state_ttl_days} must outlive LOOKBACK_S={self.lookback_s}, "
                "or a re-read stockout would be saved twice"
            )
        if self.retry_backoff_max_s + self.task_time_limit_s >= self.broker_visibility_timeout_s:
            raise ValueError(
                "BROKER_VISIBILITY_TIMEOUT_S must exceed TASK_TIME_LIMIT_S + RETRY_BACKOFF_MAX_S, "
                "or Redis hands a running or waiting task to a second worker"
            )
        if self.http_connect_timeout_s + self.http_read_timeout_s >= 0.8 * self.task_time_limit_s:
            raise ValueError(
                "HTTP_CONNECT_TIMEOUT_S + HTTP_READ_TIMEOUT_S must stay well under TASK_TIME_LIMIT_S, "
                "so a hung call ends in a retry, never in the hard time limit"
            )
        return self

    def secret_values(self) -> list[str]:
        """Every configured secret, for scrubbing; includes the password inside REDIS_URL."""
        values = [self.wdt_app_secret.get_secret_value(), self.bip_app_secret.get_secret_value()]
        from urllib.parse import urlsplit

        password = urlsplit(self.redis_url).password
        if password:
            values.append(password)
        return [v for v in values if v]


SECRETS = ("WDT_APP_SECRET", "BIP_APP_SECRET")


def masked_url(url: str) -> str:
    """A URL fit to print: its password, if any, replaced by ***."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        netloc = f"{parts.username or ''}:***@{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}"
        return urlunsplit(parts._replace(netloc=netloc))
    except ValueError:
        return "(unparsable URL, not shown)"


def explain(error: ValidationError) -> str:
    """Settings errors on one line, each naming the variable as the environment spells it and its
    value — never a secret's value, and REDIS_URL without its password."""
    parts = []
    for err in error.errors():
        loc = err.get("loc") or ()
        if not loc:  # Settings._check: its messages name the variables already
            parts.append(message_of(err))
            continue
        name = str(loc[0]).upper()
        value = err.get("input")
        if name in SECRETS:
            shown = None
        elif name == "REDIS_URL" and isinstance(value, str):
            shown = repr(masked_url(value))
        else:
            shown = repr(value)
        parts.append(describe(err, name, shown))
    return "; ".join(parts)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
