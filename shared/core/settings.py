"""All configuration, read once from the environment (and `.env`).

Secrets are `SecretStr` so that printing or logging a Settings object never shows them; the
`secret_values()` list feeds the log scrubber.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit, urlunsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict
from redis.connection import parse_url

from shared.core.redis_url import is_sentinel, parse_sentinel_url
from shared.core.timeutil import parse_wire
from shared.core.validation import describe, message_of


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # `<SECRET>_FILE` (Docker secrets) comes before the variables themselves; both set is an error
        sources = [getattr(env_settings, "env_vars", {}), getattr(dotenv_settings, "env_vars", {})]
        files = SecretFiles(settings_cls, sources)
        return init_settings, files, env_settings, dotenv_settings, file_secret_settings

    @field_validator("*", mode="before")
    @classmethod
    def _secret_file_problem(cls, value: Any) -> Any:
        if isinstance(value, SecretFileProblem):
            raise ValueError(str(value))
        return value

    # 旺店通 through the Qimen gateway
    wdt_qimen_url: str = "https://hu3cgwt0tc.api.taobao.com/router/qm"
    wdt_app_key: str = ""
    wdt_app_secret: SecretStr = SecretStr("")
    wdt_sid: str = ""
    wdt_target_app_key: str = "21363512"
    wdt_page_size: int = Field(100, ge=1, le=100)
    wdt_rate_per_minute: float = Field(60, gt=0, description="calls a minute for the whole tenant")
    wdt_lookup_horizon_days: int = Field(
        365, ge=30, le=3650, description="trace/preview look a number up in 30-day windows back this far")

    # 用友BIP
    bip_tenant_id: str = ""
    bip_app_key: str = ""
    bip_app_secret: SecretStr = SecretStr("")
    bip_discovery_url: str = "https://apigateway.yonyoucloud.com/open-auth/dataCenter/getGatewayAddress"
    bip_gateway_url: str = ""
    bip_token_url: str = ""
    bip_rate_per_second: float = Field(20, gt=0, description="save calls a second for the whole tenant")
    bip_token_margin_s: int = Field(300, ge=0, description="renew the token this long before it expires")
    # Exactly once when memories fail (docs/design.md, "Exactly once"): how long BIP's gateway
    # remembers a resubmitCheckKey, the account the keys are named after, beat's copy of the state.
    bip_key_memory_s: int = Field(3600, ge=2, description="how long BIP's gateway remembers a resubmitCheckKey")
    key_namespace: str = Field("", max_length=64, description="names the WDT account in every key; empty = WDT_SID")
    state_copy_file: str = Field("", description="beat's copy of the state epoch and cursor; empty = none")
    auto_recover: bool = Field(True, description="beat rebuilds a lost state from BIP by itself when its copy allows")

    # HTTP
    http_connect_timeout_s: float = 5.0
    http_read_timeout_s: float = 30.0

    # Redis and Celery
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_prefix: str = "sos"
    redis_ca_certs: str = Field("", description="CA bundle to verify a rediss:// server; empty = the system's")
    # An evicting maxmemory-policy drops done marks and the cursor: stockouts saved twice. Only this runs with one.
    redis_allow_eviction: bool = Field(False, description="let worker and beat start on an evicting Redis")
    # Longer than any task can run: a message unacked for this long is handed to another worker.
    # Well under BIP_KEY_MEMORY_S, so a dead worker's save comes back while BIP still knows its key.
    broker_visibility_timeout_s: int = 1200
    task_time_limit_s: int = 300
    worker_pool: str = "prefork"
    worker_concurrency: int = 8

    # The producer
    poll_interval_s: float = 60.0
    lookback_s: int = Field(3600, ge=0)
    settle_s: int = Field(60, ge=0, description="stay this far behind now: WDT may still be writing")
    initial_since: str = Field("", description="Beijing time the first poll starts from; empty = now − 1 day")
    slice_days: float = Field(1.0, gt=0, le=30)
    backfill_max_days: float = Field(365, gt=0, description="a backfill over this many days asks for --yes")
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
    # Scheduled reconcile (beat reconciles the previous Beijing day once a day)
    reconcile_daily_at: str = Field("", description="HH:MM Beijing time of the daily run; empty = off")
    reconcile_daily_max_calls: int = Field(
        1000, ge=0, description="detail/code look-ups the daily run may spend (a random sample beyond); 0 = no limit"
    )

    # Redis Sentinel: REDIS_URL=sentinel://:password@host1:26379;sentinel://host2:26379/0 names the
    # Sentinels; the broker and our own state client both follow the master they name after a failover.
    redis_sentinel_master: str = Field("", description="the master's name in the Sentinels (`sentinel monitor NAME`)")
    redis_sentinel_password: SecretStr = Field(SecretStr(""), description="the Sentinels' own password, if any")
    # Backfill, backpressure and the lookback (docs/operating.md, "Backfilling history")
    # Messages waiting in Redis (both stockout queues + unacked) at which backfills stop publishing,
    # and below which they start again; 0 = 5 minutes of BIP_RATE_PER_SECOND, and half of that.
    backlog_high_water: int = Field(0, ge=0, description="backfills pause at this many waiting messages")
    backlog_low_water: int = Field(0, ge=0, description="backfills resume below this many waiting messages")
    # The lookback is re-read only where WDT's counts say something changed; this is how often they are compared.
    lookback_check_s: float = Field(120.0, ge=0, description="seconds between lookback count checks; 0 = every poll")

    # Poison messages (shared/queue/poison.py): a queue entry larger than this is quarantined undecoded.
    # Far above any real stockout (a thousand lines is ~1 MB), low enough that a runaway entry
    # never reaches kombu's and Celery's decoding.
    max_message_bytes: int = Field(8 * 1024 * 1024, ge=64 * 1024, description="largest queue entry a worker decodes")
    # Alerts (sent by the beat process; any combination of channels, none = no alerts)
    alert_webhook_url: SecretStr = SecretStr("")
    alert_dingtalk_url: SecretStr = SecretStr("")
    alert_dingtalk_secret: SecretStr = SecretStr("")
    alert_wecom_url: SecretStr = SecretStr("")
    alert_feishu_url: SecretStr = SecretStr("")
    alert_feishu_secret: SecretStr = SecretStr("")
    alert_feishu_msg_type: Literal["text", "post"] = "post"
    alert_interval_s: int = Field(300, ge=1, description="at most one message per reason or condition this often")
    alert_check_interval_s: float = Field(30.0, gt=0, description="how often beat looks for something to tell")
    alert_send_timeout_s: float = Field(5.0, gt=0, description="one HTTP request to a channel")
    alert_send_budget_s: float = Field(60.0, gt=0, description="all attempts of one message to one channel")
    # The operator console (ops/console, docs/console.md): signed session cookies, users from a file
    console_secret_key: SecretStr = SecretStr("")
    console_users_file: Path = Field(Path("console-users"), description="user:role:hash lines")
    console_refresh_s: float = Field(5.0, gt=0, description="how often the console re-reads the status")
    # Flower's basic auth (`stockout-sync flower`): user:password, several joined by commas
    flower_basic_auth: SecretStr = SecretStr("")

    @field_validator("flower_basic_auth")
    @classmethod
    def _user_colon_password(cls, value: SecretStr) -> SecretStr:
        # the value is a password: the error says what is wrong with it, never what it is
        for n, pair in enumerate(value.get_secret_value().split(","), start=1):
            user, colon, password = pair.partition(":")
            if value.get_secret_value() and not (user.strip() and colon and password):
                wrong = "no ':'" if not colon else "an empty user" if not user.strip() else "an empty password"
                raise ValueError(f"must be user:password (several joined by commas); credential {n} has {wrong}")
        return value

    @field_validator("reconcile_daily_at")
    @classmethod
    def _check_daily_at(cls, value: str) -> str:
        value = value.strip()
        if value and not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", value):
            raise ValueError(f"RECONCILE_DAILY_AT must be HH:MM in Beijing time (00:00–23:59) or empty, got {value!r}")
        return value

    def reconcile_daily_time(self) -> tuple[int, int] | None:
        """(hour, minute) of the daily reconcile in Beijing time, None when it is off."""
        if not self.reconcile_daily_at:
            return None
        hour, minute = self.reconcile_daily_at.split(":")
        return int(hour), int(minute)

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
        if is_sentinel(value):
            return value  # checked part by part in _check (parse_sentinel_url)
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("expected redis://host:port/db, rediss://… (TLS), unix://… or sentinel://…")
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
        if 2 * self.broker_visibility_timeout_s > self.bip_key_memory_s:
            raise ValueError(
                f"BROKER_VISIBILITY_TIMEOUT_S={self.broker_visibility_timeout_s} must stay at most half of "
                f"BIP_KEY_MEMORY_S={self.bip_key_memory_s}: a dead worker's save must come back while BIP "
                "still remembers its resubmitCheckKey"
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
        self._check_sentinel()
        if self.backlog_low_water and self.backlog_low_water >= self.high_water:
            raise ValueError(
                f"BACKLOG_LOW_WATER={self.backlog_low_water} must be below the high-water mark ({self.high_water}; "
                "BACKLOG_HIGH_WATER), or backfills never pause"
            )
        for name in ALERT_URLS:
            url = getattr(self, name).get_secret_value()
            # The URL carries the robot's token: the error names the variable and the scheme only.
            if url and urlsplit(url).scheme not in ("http", "https"):
                raise ValueError(f"{name.upper()} must be an http(s) URL (got scheme {urlsplit(url).scheme!r})")
        if self.alert_send_timeout_s >= self.alert_send_budget_s:
            raise ValueError("ALERT_SEND_TIMEOUT_S must be shorter than ALERT_SEND_BUDGET_S, or a channel gets one try")
        return self

    def _check_sentinel(self) -> None:
        if is_sentinel(self.redis_url):
            parse_sentinel_url(self.redis_url)  # its errors name REDIS_URL and the part
            if not self.redis_sentinel_master:
                raise ValueError("REDIS_URL is sentinel:// but REDIS_SENTINEL_MASTER (the master's name) is empty")
            if self.redis_ca_certs:
                raise ValueError("REDIS_CA_CERTS is set but REDIS_URL is sentinel://: TLS to Sentinel and its "
                                 "master is not supported (rediss:// to a single server is)")
        elif self.redis_sentinel_master:
            raise ValueError(f"REDIS_SENTINEL_MASTER={self.redis_sentinel_master!r} is set but REDIS_URL is "
                             "not sentinel://host:26379;sentinel://…")

    def sentinel_options(self) -> dict[str, str]:
        """What `shared.redis.conn.connect` needs besides the URL when REDIS_URL is sentinel://."""
        return {"master": self.redis_sentinel_master,
                "sentinel_password": self.redis_sentinel_password.get_secret_value()}

    @property
    def key_account(self) -> str:
        """The WDT account every resubmitCheckKey names (KEY_NAMESPACE, else WDT_SID; may be empty)."""
        return self.key_namespace.strip() or self.wdt_sid.strip()

    @property
    def high_water(self) -> int:
        return self.backlog_high_water or max(100, round(self.bip_rate_per_second * 300))

    @property
    def low_water(self) -> int:
        return self.backlog_low_water or self.high_water // 2

    def secret_values(self) -> list[str]:
        """Every configured secret, for scrubbing; includes the password inside REDIS_URL."""
        values = [self.wdt_app_secret.get_secret_value(), self.bip_app_secret.get_secret_value(),
                  self.redis_sentinel_password.get_secret_value()]
        for part in self.redis_url.split(";"):  # a sentinel:// URL may carry it on any of its parts
            password = urlsplit(part).password
            if password:
                values += [password, unquote(password)]
        values += [self.alert_dingtalk_secret.get_secret_value(), self.alert_feishu_secret.get_secret_value()]
        values.append(self.console_secret_key.get_secret_value())
        values += [pair.partition(":")[2] for pair in self.flower_basic_auth.get_secret_value().split(",")]
        for name in ALERT_URLS:
            values += url_secrets(getattr(self, name).get_secret_value())
        return list(dict.fromkeys(v for v in values if v))




class SecretFileProblem(str):
    """Why `<NAME>_FILE` gave no secret, in words (its path, never its content): raised as the
    variable's validation error, so it is one start-up line like any other setting's."""


MAX_SECRET_FILE_BYTES = 64 * 1024  # a secret is a line; /dev/zero or a log file is a mistake, not a secret


class SecretFiles(PydanticBaseSettingsSource):
    """Every secret (a SecretStr setting) may come from a file named by `<NAME>_FILE` instead, as Docker
    secrets are mounted, so it need not sit in the process's environment. The file's content is the
    secret, without a trailing newline."""

    def __init__(self, settings_cls: type[BaseSettings], sources: list[Mapping[str, str | None]]) -> None:
        super().__init__(settings_cls)
        self.variables: dict[str, str] = {}
        for source in reversed(sources):  # the environment wins over .env
            self.variables.update({k.upper(): v for k, v in source.items() if v is not None})

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # all the work is in __call__

    def __call__(self) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for name, field in self.settings_cls.model_fields.items():
            path = self.variables.get(f"{name.upper()}_FILE", "")
            if field.annotation is SecretStr and path:
                found[name] = read_secret_file(name.upper(), path, also_set=bool(self.variables.get(name.upper())))
        return found


def read_secret_file(name: str, path: str, *, also_set: bool = False) -> str:
    """The secret in `path`, or a SecretFileProblem naming the variable and the path."""
    where = f"{name}_FILE={path!r}"
    if also_set:
        return SecretFileProblem(f"both {name} and {where} are set: use one of them")
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_SECRET_FILE_BYTES + 1)
    except OSError as err:
        return SecretFileProblem(f"{where} cannot be read ({err.strerror or type(err).__name__})")
    if len(data) > MAX_SECRET_FILE_BYTES:
        return SecretFileProblem(f"{where} is larger than {MAX_SECRET_FILE_BYTES // 1024} KiB: not a secret file")
    try:
        text = data.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        return SecretFileProblem(f"{where} is not UTF-8 text")
    if not text:
        return SecretFileProblem(f"{where} is empty")
    return text


ALERT_URLS = ("alert_webhook_url", "alert_dingtalk_url", "alert_wecom_url", "alert_feishu_url")


def url_secrets(url: str) -> list[str]:
    """The parts of a robot's URL that are its credential: the whole URL, a password in it, every
    query value (DingTalk's access_token, WeCom's key) and a long last path segment (Feishu's hook id)."""
    if not url:
        return []
    parts = urlsplit(url)
    found = [url, parts.password or ""]
    for pair in parts.query.split("&"):
        _, _, value = pair.partition("=")
        found += [value, unquote(value)]
    segment = parts.path.rstrip("/").rsplit("/", 1)[-1]
    # a generic path word ("send", "hook") is no secret; a token is long
    if len(segment) >= 16:
        found.append(segment)
    return [v for v in found if len(v) >= 8]


def _secret_names() -> frozenset[str]:
    """Every variable typed SecretStr (API secrets, robot URLs and keys): their values are never shown."""
    return frozenset(name.upper() for name, field in Settings.model_fields.items() if field.annotation is SecretStr)




def masked_url(url: str) -> str:
    """A URL fit to print: its password, if any, replaced by *** (in every part of a sentinel:// list)."""
    if ";" in url:
        return ";".join(masked_url(part) for part in url.split(";"))
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
        if name in _secret_names():
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
