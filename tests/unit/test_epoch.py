"""The state's epoch and its checks, the account in the key, and the setting that keeps the
visibility timeout under BIP's key memory (shared/redis/epoch.py, shared/bip/idempotency.py)."""
from __future__ import annotations

import pytest
from pydantic import ValidationError

from shared.bip.idempotency import our_keys, resubmit_key
from shared.core.settings import Settings
from shared.redis import breaker, epoch

P = "u"


def test_beat_creates_the_epoch_once_and_keeps_its_copy(redis_client, tmp_path):
    copy = epoch.StateCopy(tmp_path / "state.json")
    assert epoch.check_beat(redis_client, P, copy, "") == ""
    first = epoch.read(redis_client, P)
    assert first is not None and not first.inherited and first.verify_before == 0
    assert epoch.check_beat(redis_client, P, copy, "2026-12-01 10:00:00", recover_from="2026-12-01 09:50:00") == ""
    assert epoch.read(redis_client, P) == first
    assert copy.load() == epoch.Copy(first.id, "2026-12-01 10:00:00", "2026-12-01 09:50:00")


def test_a_state_gone_while_the_copy_remembers_it_pauses(redis_client, tmp_path):
    copy = epoch.StateCopy(tmp_path / "state.json")
    epoch.check_beat(redis_client, P, copy, "2026-12-01 10:00:00")
    redis_client.flushdb()
    problem = epoch.check_beat(redis_client, P, copy, "")
    assert "Redis lost its state" in problem and "2026-12-01 10:00:00" in problem
    assert breaker.is_open(redis_client, P, epoch.SCOPE)
    assert epoch.read(redis_client, P) is None, "no new epoch over a lost state"
    assert epoch.check_beat(redis_client, P, copy, "") != "", "it stays paused: no probe closes it"


def test_another_states_epoch_pauses_a_recovered_one_is_adopted(redis_client, tmp_path):
    copy = epoch.StateCopy(tmp_path / "state.json")
    epoch.check_beat(redis_client, P, copy, "")
    redis_client.flushdb()
    epoch.create(redis_client, P)
    assert "another state" in epoch.check_beat(redis_client, P, copy, "")
    breaker.close(redis_client, P, epoch.SCOPE)
    recovered = epoch.create(redis_client, P, recovered=True)
    assert epoch.check_beat(redis_client, P, copy, "") == ""
    assert copy.load().epoch == recovered.id and recovered.verify_before == recovered.recovered


def test_a_cursor_without_an_epoch_is_an_older_versions_state(redis_client):
    assert epoch.check_beat(redis_client, P, None, "2026-12-01 10:00:00") == ""
    found = epoch.read(redis_client, P)
    assert found.inherited and found.verify_before == found.created


def test_the_worker_pauses_when_the_epoch_it_saw_goes_or_changes(redis_client):
    guard = epoch.StateGuard(redis_client, P, cache_s=0)
    seen = guard.check()  # none yet: the worker starts the state
    assert guard.check() == seen
    redis_client.flushdb()
    with pytest.raises(epoch.StatePaused, match="lost its state"):
        guard.check()
    assert breaker.is_open(redis_client, P, epoch.SCOPE)
    with pytest.raises(epoch.StatePaused):  # a new epoch does not reopen it: only recover does
        epoch.create(redis_client, P)
        guard.check()
    breaker.close(redis_client, P, epoch.SCOPE)
    with pytest.raises(epoch.StatePaused, match="another state"):
        guard.check()
    breaker.close(redis_client, P, epoch.SCOPE)
    recovered = epoch.create(redis_client, P, recovered=True)
    assert guard.check() == recovered


def test_keys_name_the_account_and_stay_within_32_characters():
    a, b = resubmit_key("1000001", 0, "shop-a"), resubmit_key("1000001", 0, "shop-b")
    assert a != b and len(a) == len(b) == 32
    assert resubmit_key("1000001", 1, "shop-a") != a
    assert resubmit_key("1000001") == "wdtso-1000001", "without an account: the old key, unchanged"
    assert our_keys("1000001", "shop-a", generations=1) == {a, resubmit_key("1000001", 1, "shop-a")}
    assert "wdtso-1000001" in our_keys("1000001", "shop-a", legacy=True)


def test_the_visibility_timeout_stays_under_half_bips_key_memory():
    Settings(_env_file=None, broker_visibility_timeout_s=1800, bip_key_memory_s=3600)
    with pytest.raises(ValidationError, match="BIP_KEY_MEMORY_S"):
        Settings(_env_file=None, broker_visibility_timeout_s=2000, bip_key_memory_s=3600)
    assert Settings(_env_file=None, wdt_sid="s1").key_account == "s1"
    assert Settings(_env_file=None, wdt_sid="s1", key_namespace="shop").key_account == "shop"
