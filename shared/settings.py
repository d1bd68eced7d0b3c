"""All configuration, read once from the environment (and `.env`).

Secrets are `SecretStr` so that printing or logging a Settings object never shows them; the
`secret_values()` list feeds the log scrubber.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


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

    # Rate limits and the circuit breaker (issue 10): WDT_RATE_PER_MINUTE and BIP_RATE_PER_SECOND
    # are ceilings; the shared rate adapts below them when the API refuses calls as too frequent.
    breaker_probe_interval_s: float = Field(
        30.0, gt=0, le=3600, description="while paused on a configuration error, one probe call this often"
    )
    # Dead letters (issue 11): how long they are kept, and whether receivers' personal data is kept in them
    dlq_ttl_days: int = Field(30, ge=1, le=3650, description="letters go this long after their last failure")
    dlq_keep_personal_data: bool = Field(False, description="keep receiver_name/mobile/telno/address/zip in letters")

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
        if 1.25 * self.breaker_probe_interval_s + self.task_time_limit_s >= self.broker_visibility_timeout_s:
            raise ValueError(
                "BROKER_VISIBILITY_TIMEOUT_S must exceed TASK_TIME_LIMIT_S + 1.25 × BREAKER_PROBE_INTERVAL_S: a task "
                "paused by the breaker waits that long and must not be handed to a second worker meanwhile"
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


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
