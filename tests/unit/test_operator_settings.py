"""Settings operators set for the commands they run: each refusal names the variable, never a password."""
from __future__ import annotations

import pytest
from pydantic import ValidationError

from shared.core.settings import Settings, explain


@pytest.mark.invariant(4)
@pytest.mark.parametrize(("value", "why"), [
    ("nocolon", "credential 1 has no ':'"),
    ("ops:s3cret-pw,admin:", "credential 2 has an empty password"),
    (":s3cret-pw", "credential 1 has an empty user"),
])
def test_flower_basic_auth_must_be_user_colon_password_and_is_never_shown(value, why):
    with pytest.raises(ValidationError) as err:
        Settings(_env_file=None, flower_basic_auth=value)
    text = explain(err.value)
    assert text.startswith("FLOWER_BASIC_AUTH: must be user:password") and why in text
    assert "nocolon" not in text and "s3cret-pw" not in text


@pytest.mark.invariant(4)
def test_good_flower_credentials_pass_and_their_passwords_are_scrubbed():
    s = Settings(_env_file=None, flower_basic_auth="ops:pw-one,admin:pw-two")
    assert {"pw-one", "pw-two"} <= set(s.secret_values())
    assert Settings(_env_file=None).flower_basic_auth.get_secret_value() == ""


def test_lookup_horizon_and_backfill_size_are_checked_by_name():
    assert Settings(_env_file=None).wdt_lookup_horizon_days == 365 and Settings(_env_file=None).backfill_max_days == 365
    with pytest.raises(ValidationError) as err:
        Settings(_env_file=None, wdt_lookup_horizon_days=5, backfill_max_days=0)
    text = explain(err.value)
    assert "WDT_LOOKUP_HORIZON_DAYS:" in text and "got 5" in text and "BACKFILL_MAX_DAYS:" in text
