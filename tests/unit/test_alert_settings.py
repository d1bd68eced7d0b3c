"""The alert settings: URLs checked without showing their token, and every credential in them scrubbed."""
from __future__ import annotations

import pytest
from pydantic import ValidationError

from producer.alerts.channels import channels_from_settings
from shared.core.logs import Scrubber
from shared.core.settings import Settings
from shared.core.settings import explain as settings_error

DING = "https://oapi.dingtalk.com/robot/send?access_token=0f3c9a7e5b1d2c4e6a8b"
FEISHU = "https://open.feishu.cn/open-apis/bot/v2/hook/6f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b"


def test_a_bad_alert_url_names_the_variable_not_the_token():
    with pytest.raises(ValidationError) as err:
        Settings(alert_wecom_url="qyapi.weixin.qq.com/cgi-bin/webhook/send?key=abcdef0123456789",
                 wdt_app_secret="wdt-secret-55aa")
    text = settings_error(err.value)
    assert "ALERT_WECOM_URL must be an http(s) URL" in text
    # pydantic's own text would show every input (the secrets too) beside a model-level problem
    assert "abcdef0123456789" not in text and "wdt-secret-55aa" not in text


def test_a_field_error_names_the_variable_and_its_value_unless_secret():
    with pytest.raises(ValidationError) as err:
        Settings(wdt_page_size=500, alert_feishu_msg_type="card")
    text = settings_error(err.value)
    assert "WDT_PAGE_SIZE:" in text and "got 500" in text and "ALERT_FEISHU_MSG_TYPE:" in text and "'card'" in text


def test_every_robot_credential_is_scrubbed():
    settings = Settings(alert_dingtalk_url=DING, alert_dingtalk_secret="SECd1ngtalk-secret",
                        alert_feishu_url=FEISHU, alert_feishu_secret="feishu-secret-9")
    scrub = Scrubber(settings.secret_values())
    line = (f"posting to {DING} failed; token 0f3c9a7e5b1d2c4e6a8b, hook 6f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b, "
            "secrets SECd1ngtalk-secret feishu-secret-9")
    cleaned = scrub(line)
    for secret in ("0f3c9a7e5b1d2c4e6a8b", "6f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b", "SECd1ngtalk-secret",
                   "feishu-secret-9"):
        assert secret not in cleaned
    assert "oapi.dingtalk.com" not in cleaned or "***" in cleaned
    assert repr(settings).count("0f3c9a7e5b1d2c4e6a8b") == 0  # SecretStr


def test_channels_are_the_configured_ones():
    assert channels_from_settings(Settings()) == []
    settings = Settings(alert_webhook_url="http://alerts.local/x", alert_feishu_url=FEISHU,
                        alert_feishu_msg_type="text")
    names = [c.name for c in channels_from_settings(settings)]
    assert names == ["webhook", "feishu"]
