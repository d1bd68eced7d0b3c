"""Alert messages and the channels that carry them: a JSON webhook and the 钉钉 / 企业微信 / 飞书 group robots.

What to alert on is the producer's business (producer/alerts/watch.py); this module only renders an
`Alert`, signs and posts it, and tells whether the channel took it (the robots answer HTTP 200
with a non-zero `errcode`/`code` when they refuse). Robot URLs carry their token, so no URL or
exception text from `requests` ever reaches a message or a log line, only the channel's name.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import quote_plus

import requests
from pydantic import BaseModel, Field

from shared.core import metrics
from shared.core.settings import Settings
from shared.core.timeutil import format_wire, now_beijing

log = logging.getLogger("stockout_sync.alerts")

Kind = Literal["dead_letters", "breaker", "cursor_lag", "no_worker", "mapping_invalid", "reconcile_mismatch", "clock",
               "test"]
Status = Literal["firing", "resolved"]
Severity = Literal["critical", "warning", "info"]
SCHEMA_VERSION = 1


class Alert(BaseModel):
    """One message; also the JSON body ALERT_WEBHOOK_URL receives (docs/alerts.md)."""

    version: int = SCHEMA_VERSION
    kind: Kind
    status: Status = "firing"
    severity: Severity = "warning"
    title: str
    # plain-text lines of the message body; the robots get them as markdown or text
    lines: list[str] = Field(default_factory=list)
    at: str = Field(default_factory=lambda: format_wire(now_beijing()))
    prefix: str = ""
    host: str = Field(default_factory=socket.gethostname)
    details: dict[str, Any] = Field(default_factory=dict)

    @property
    def heading(self) -> str:
        mark = "RESOLVED" if self.status == "resolved" else self.severity.upper()
        return f"[stockout-sync {mark}] {self.title}"

    def text(self) -> str:
        return "\n".join([self.heading, *self.lines, f"{self.at} · {self.host} · prefix {self.prefix}"])

    def markdown(self) -> str:
        body = "\n".join(f"- {_md(line)}" for line in self.lines)
        return f"### {_md(self.heading)}\n{body}\n\n> {self.at} · {_md(self.host)} · prefix {_md(self.prefix)}"


def _md(text: str) -> str:
    # One list item per line. No backslash escapes: the robots' markdown subsets would show them as is.
    return " ".join(text.split("\n"))


# -- signing ---------------------------------------------------------------------------------------
def dingtalk_sign(secret: str, timestamp_ms: int) -> str:
    """钉钉 加签: URL-encoded Base64 of HMAC-SHA256, key = the secret, message = "{timestamp}\\n{secret}"."""
    digest = hmac.new(secret.encode(), f"{timestamp_ms}\n{secret}".encode(), hashlib.sha256).digest()
    return quote_plus(base64.b64encode(digest).decode())


def feishu_sign(secret: str, timestamp_s: int) -> str:
    """飞书: Base64 of HMAC-SHA256 with the key "{timestamp}\\n{secret}" over an empty message."""
    digest = hmac.new(f"{timestamp_s}\n{secret}".encode(), b"", hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


# -- channels ----------------------------------------------------------------------------------------
class ChannelError(Exception):
    """A channel did not take the message; the text never holds the URL."""


@dataclass(frozen=True)
class Reply:
    channel: str
    ok: bool
    attempts: int
    detail: str  # the robot's own answer (errcode/errmsg), or what went wrong


@dataclass(frozen=True)
class Channel:
    name: str
    url: str
    secret: str = ""
    msg_type: str = ""

    def request(self, alert: Alert, now: float) -> tuple[str, dict]:
        """The URL to post to and the JSON body."""
        if self.name == "webhook":
            return self.url, alert.model_dump(mode="json")
        if self.name == "dingtalk":
            url = self.url
            if self.secret:
                ts = int(now * 1000)
                url += ("&" if "?" in url else "?") + f"timestamp={ts}&sign={dingtalk_sign(self.secret, ts)}"
            return url, {"msgtype": "markdown", "markdown": {"title": alert.heading, "text": alert.markdown()}}
        if self.name == "wecom":
            return self.url, {"msgtype": "markdown", "markdown": {"content": alert.markdown()}}
        if self.name == "feishu":
            body: dict[str, Any]
            if self.msg_type == "text":
                body = {"msg_type": "text", "content": {"text": alert.text()}}
            else:
                footer = f"{alert.at} · {alert.host} · prefix {alert.prefix}"
                rows = [[{"tag": "text", "text": line}] for line in [*alert.lines, footer]]
                body = {"msg_type": "post", "content": {"post": {"zh_cn": {"title": alert.heading, "content": rows}}}}
            if self.secret:
                ts = int(now)
                body = {"timestamp": str(ts), "sign": feishu_sign(self.secret, ts), **body}
            return self.url, body
        raise ValueError(f"unknown alert channel {self.name!r}")

    def send(self, alert: Alert, session: requests.Session, timeout_s: float) -> str:
        """Post once; the robot's answer as text, or ChannelError."""
        url, body = self.request(alert, time.time())
        try:
            response = session.post(url, json=body, timeout=(min(timeout_s, 3.0), timeout_s))
        except requests.RequestException as err:
            # requests puts the URL (and its token) into the text: only the class name travels
            raise ChannelError(f"{type(err).__name__}") from None
        return check_reply(self.name, response)


def check_reply(channel: str, response: requests.Response) -> str:
    if response.status_code >= 300:
        raise ChannelError(f"HTTP {response.status_code}")
    try:
        data = response.json()
    except ValueError:
        if channel == "webhook":
            return f"HTTP {response.status_code}"
        raise ChannelError(f"HTTP {response.status_code}, not JSON") from None
    if not isinstance(data, dict):
        return f"HTTP {response.status_code}"
    # 钉钉/企业微信 answer errcode/errmsg, 飞书 code/msg; anything but 0 is a refusal
    for code_key, message_key in (("errcode", "errmsg"), ("code", "msg")):
        if code_key in data:
            code, message = data.get(code_key), str(data.get(message_key, ""))[:200]
            if str(code) not in ("0", ""):
                raise ChannelError(f"{code_key} {code}: {message}")
            return f"{code_key} {code}: {message}".strip()
    return f"HTTP {response.status_code}"


def channels_from_settings(settings: Settings) -> list[Channel]:
    found = []
    for name, url, secret in (
        ("webhook", settings.alert_webhook_url, None),
        ("dingtalk", settings.alert_dingtalk_url, settings.alert_dingtalk_secret),
        ("wecom", settings.alert_wecom_url, None),
        ("feishu", settings.alert_feishu_url, settings.alert_feishu_secret),
    ):
        if url.get_secret_value():
            found.append(Channel(name, url.get_secret_value(), secret.get_secret_value() if secret else "",
                                 settings.alert_feishu_msg_type if name == "feishu" else ""))
    return found


# -- delivery ----------------------------------------------------------------------------------------
@dataclass
class Sender:
    """Delivers a message to every channel at once, each with its own retries and time budget, so a
    dead or slow robot delays nobody but itself."""

    channels: list[Channel]
    timeout_s: float = 5.0
    budget_s: float = 60.0
    backoff_s: float = 1.0
    # Set when the process stops: a retry waiting on a dead robot gives up at once. The pool's threads
    # are joined at exit, so without it a beat asked to stop would wait out the whole budget (60 s),
    # past any orchestrator's grace period.
    stopping: threading.Event = field(default_factory=threading.Event)

    def stop(self) -> None:
        self.stopping.set()

    def send(self, alert: Alert) -> list[Reply]:
        if not self.channels:
            return []
        with ThreadPoolExecutor(max_workers=len(self.channels), thread_name_prefix="alert") as pool:
            return list(pool.map(lambda channel: self._one(channel, alert), self.channels))

    def _one(self, channel: Channel, alert: Alert) -> Reply:
        deadline = time.monotonic() + self.budget_s
        attempt, wait = 0, self.backoff_s
        with requests.Session() as session:
            while True:
                attempt += 1
                left = deadline - time.monotonic()
                try:
                    answer = channel.send(alert, session, max(0.5, min(self.timeout_s, left)))
                except ChannelError as err:
                    left = deadline - time.monotonic()
                    if left > wait and not self.stopping.is_set():
                        log.warning("alert %s to %s failed (attempt %d: %s); again in %.1f s",
                                    alert.kind, channel.name, attempt, err, wait)
                        if not self.stopping.wait(wait):
                            wait = min(wait * 2, 30.0)
                            continue
                    why = "the process is stopping" if self.stopping.is_set() else f"{attempt} attempt(s)"
                    metrics.observe_alert(alert.kind, channel.name, delivered=False)
                    log.error("alert %s (%s) not delivered to %s after %s: %s",
                              alert.kind, alert.status, channel.name, why, err)
                    return Reply(channel.name, False, attempt, str(err))
                metrics.observe_alert(alert.kind, channel.name, delivered=True)
                log.info("alert %s (%s) delivered to %s: %s", alert.kind, alert.status, channel.name, answer)
                return Reply(channel.name, True, attempt, answer)


def sender_from_settings(settings: Settings) -> Sender:
    return Sender(channels_from_settings(settings), timeout_s=settings.alert_send_timeout_s,
                  budget_s=settings.alert_send_budget_s)
