"""Dead letters an operator can see, understand and requeue: retries, routing, the `dlq` commands."""
from __future__ import annotations

import base64
import json
import shutil
import threading

import pytest
import redis

from ops.processes import wait_until
from producer.poll import poll_once
from shared.core.personal import redact
from shared.deadletters.model import DeadLetter
from shared.deadletters.store import DeadLetterStore
from shared.queue.publisher import publish_stockout
from shared.runtime import runtime
from tests.cli import cli
from tests.integration.conftest import reset_service_caches
from tests.integration.faults import (
    dead_lettered,
    eligible,
    recent,
    saved,
    unmapped_warehouse_synced,
    wait_for_attempts,
)
from tests.progress import pipeline

pytestmark = pytest.mark.integration


def test_poison_is_dead_lettered_at_once_then_fixed_mapping_and_requeue_saves_it_once(
    sandbox, processes, redis_client, tmp_path, monkeypatch
):
    mapping = tmp_path / "mapping.toml"
    shutil.copy(processes.env["MAPPING_FILE"], mapping)
    processes.env["MAPPING_FILE"] = str(mapping)
    monkeypatch.setenv("MAPPING_FILE", str(mapping))
    reset_service_caches()

    poison, _, letters = unmapped_warehouse_synced(sandbox, processes, redis_client, 20)

    letter = letters.get(poison["stockout_id"])
    assert letter.attempts == 1, "a permanent error is not retried"
    assert letter.stage == "transform" and "WH-NEW9" in letter.message and "warehouses" in letter.message
    assert letter.stockout == redact(poison), "the original stockout is kept whole, but for the receiver's data"
    assert letters.queue_length() == 1

    # readable by a person, parseable by a program
    listing = cli(processes.env, "dlq", "list")
    assert listing.returncode == 0 and poison["stockout_id"] in listing.stdout and "WH-NEW9" in listing.stdout
    as_json = json.loads(cli(processes.env, "dlq", "list", "--json").stdout)
    assert [letter["stockout_id"] for letter in as_json] == [poison["stockout_id"]]
    shown = cli(processes.env, "dlq", "show", poison["stockout_id"], "--json")
    assert DeadLetter.model_validate_json(shown.stdout).stockout["warehouse_no"] == "WH-NEW9"
    assert cli(processes.env, "dlq", "show", "no-such-id").returncode == 1

    # the repair path: fix the mapping, requeue; the running worker picks the new mapping up
    mapping.write_text(mapping.read_text() + '\n[warehouses."WH-NEW9"]\nwarehouse = "SH01"\n')
    requeued = cli(processes.env, "dlq", "requeue", poison["stockout_id"])
    assert requeued.returncode == 0, requeued.stderr
    wait_until(lambda: poison["stockout_id"] in saved(sandbox), message="requeued stockout saved",
               progress=pipeline(sandbox, redis_client))
    assert saved(sandbox)[poison["stockout_id"]] == 1
    assert letters.ids() == [] and letters.queue_length() == 0
    # requeueing it again is a no-op, and a new poll does not publish it again
    assert "requeued 0" in cli(processes.env, "dlq", "requeue", "--all").stdout
    assert poll_once(runtime(), publish_stockout).published == 0


def test_transient_faults_are_retried_and_each_stockout_is_saved_exactly_once(sandbox, processes, redis_client):
    stockouts = recent(sandbox, 40)
    expected = eligible(stockouts)
    sandbox.set_faults(bip={"http_502": 0.2, "code_310504": 0.15, "rate_limit": 0.15})
    processes.env["MAX_ATTEMPTS"] = "12"
    processes.worker(concurrency=4)
    poll_once(runtime(), publish_stockout)
    letters = DeadLetterStore(redis_client, "t")
    wait_until(lambda: set(saved(sandbox)) == expected, message="all saved despite faults",
               progress=pipeline(sandbox, redis_client))
    faults = sandbox.counters()["faults"]
    assert faults.get("bip.http_502") and faults.get("bip.code_310504") and faults.get("bip.rate_limit")
    assert max(saved(sandbox).values()) == 1
    assert letters.ids() == []


def test_exhausted_retries_end_in_the_dead_letter_queue_with_the_last_error(sandbox, processes, redis_client):
    stockouts = recent(sandbox, 3)
    expected = eligible(stockouts)
    sandbox.set_faults(bip={"http_502": 1.0})
    processes.env["MAX_ATTEMPTS"] = "3"
    processes.worker(concurrency=2)
    poll_once(runtime(), publish_stockout)
    letters = DeadLetterStore(redis_client, "t")
    # the record first, then its copy on the dead_letter queue: both awaited
    wait_until(lambda: set(letters.ids()) == expected and letters.queue_length() == len(expected),
               message="dead letters", progress=pipeline(sandbox, redis_client))
    for letter in letters.all():
        assert letter.attempts == 3 and letter.stage == "save"
        assert letter.error_class == "APIConnectionError" and letter.http_status == 502
        assert letter.first_failed_at <= letter.last_failed_at
    assert letters.queue_length() == len(expected)
    assert not sandbox.records()

    # the outage ends: requeue --all saves every one exactly once
    sandbox.set_faults()
    assert cli(processes.env, "dlq", "requeue", "--all", "--yes").returncode == 0
    wait_until(lambda: set(saved(sandbox)) == expected, message="requeued saved",
               progress=pipeline(sandbox, redis_client))
    assert max(saved(sandbox).values()) == 1


def _letters(redis_client, n):
    store = DeadLetterStore(redis_client, "t")
    for i in range(n):
        raw = {"stockout_id": f"90{i}", "order_no": f"CK90{i}"}
        letter = DeadLetter(stockout_id=raw["stockout_id"], stage="transform", error_class="MappingError",
                            message="m", first_failed_at="x", last_failed_at="x", message_id=f"dlq-{i}", stockout=raw)
        store.put(letter)
        publish_stockout.dead_letter_copy(letter)
    return store


def test_two_requeues_at_once_send_each_letter_once(service, redis_client):
    store = _letters(redis_client, 30)
    assert store.queue_length() == 30
    sent: list[str] = []
    lock = threading.Lock()

    def publish(raw, key):
        with lock:
            sent.append(key)
        publish_stockout(raw, key)

    threads = [threading.Thread(target=lambda: DeadLetterStore(redis.Redis.from_url(service["REDIS_URL"]), "t")
                                .requeue(store.ids(), publish)) for _ in range(2)]
    ids_before = store.ids()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(sent) == sorted(ids_before)
    assert redis_client.llen("t:stockouts") == 30
    assert store.queue_length() == 0 and store.ids() == []


def test_a_requeue_killed_half_way_loses_nothing(service, redis_client):
    store = _letters(redis_client, 2)
    # the claim happened, then the process died before publishing
    assert store.claim("900", "requeue") is not None
    assert store.get("900") is None and store.queue_length() == 1
    sent = []
    # while the dead requeue's lease runs, nobody else publishes its letter (it may still be alive)
    store.requeue([], lambda raw, key: sent.append(key))
    assert sent == []
    redis_client.delete("t:dlq:lease:900")  # the lease runs out
    store.requeue(["901"], lambda raw, key: sent.append(key))
    assert sorted(sent) == ["900", "901"]
    assert store.parked() == []


def test_purge_asks_for_confirmation(service, redis_client):
    store = _letters(redis_client, 2)
    env = dict(service)
    refused = cli(env, "dlq", "purge", "--all", input="n\n")
    assert refused.returncode == 1 and len(store.ids()) == 2
    done = cli(env, "dlq", "purge", "900", "--yes")
    assert done.returncode == 0 and store.ids() == ["901"] and store.queue_length() == 1


def test_unknown_ids_are_named_and_big_requeues_ask_first(service, redis_client):
    store = _letters(redis_client, 13)
    for args in (["requeue", "NOPE", "12345"], ["purge", "NOPE", "12345", "--yes"], ["show", "NOPE"]):
        done = cli(service, "dlq", *args)
        assert done.returncode == 1 and "NOPE" in done.stderr, (args, done.stdout, done.stderr)
    assert store.count() == 13

    # mixed: the known ones are done, the unknown named, exit 1
    mixed = cli(service, "dlq", "requeue", "900", "NOPE")
    assert mixed.returncode == 1 and "requeued 1: 900" in mixed.stdout and "no dead letter for NOPE" in mixed.stderr
    mixed = cli(service, "dlq", "purge", "901", "NOPE", "--yes")
    assert mixed.returncode == 1 and "purged 1" in mixed.stdout and "NOPE" in mixed.stderr
    assert store.get("900") is None and store.get("901") is None and store.count() == 11

    for args in (["--all"], ["--reason", "m"]):  # all, or more than 10 matching: asked first
        refused = cli(service, "dlq", "requeue", *args, input="n\n")
        assert refused.returncode == 1 and "requeue 11 dead letter(s)" in refused.stdout, refused.stdout
        assert store.count() == 11
    few = cli(service, "dlq", "requeue", "902")  # by id: no question
    assert few.returncode == 0 and store.get("902") is None
    done = cli(service, "dlq", "requeue", "--reason", "m", "--yes")
    assert done.returncode == 0 and "requeued 10" in done.stdout and store.count() == 0


def _error_lines(logs: str) -> list[str]:
    return [line for line in logs.splitlines() if " ERROR " in line]


def test_one_error_line_per_dead_letter_and_a_requeue_that_fails_again_keeps_the_history(
    sandbox, processes, redis_client
):
    stockout = next(s for s in recent(sandbox, 6) if s["status"] in ("95", "110"))
    letters, first = dead_lettered(sandbox, processes, redis_client, stockout)
    wait_until(lambda: " raised " in processes.logs(), 60, message="Celery's line about the task")
    errors = _error_lines(processes.logs())
    assert len(errors) == 1 and stockout["stockout_id"] in errors[0], errors

    # the queue copy carries no receiver data either
    copy = json.loads(redis_client.lindex("t:dead_letter", 0))
    body = json.loads(base64.b64decode(copy["body"]))
    assert body[1]["stockout"]["order_no"] == stockout["order_no"] and "receiver_zip" not in body[1]["stockout"]

    # requeued by its order number, it fails again: the letter continues instead of starting over
    requeued = cli(processes.env, "dlq", "requeue", stockout["order_no"])
    assert requeued.returncode == 0 and "requeued 1" in requeued.stdout, requeued.stdout + requeued.stderr
    again = wait_for_attempts(letters, stockout["stockout_id"], 4, sandbox, redis_client)
    assert again.first_failed_at == first.first_failed_at
    assert [h.event for h in again.history] == ["dead_lettered", "requeued", "dead_lettered"]
    assert [h.attempts for h in again.history if h.event == "dead_lettered"] == [2, 2]
    assert letters.queue_length() == 1
    shown = cli(processes.env, "dlq", "show", stockout["order_no"])
    assert shown.returncode == 0 and "history (3)" in shown.stdout and "requeued" in shown.stdout, shown.stdout
    assert len(_error_lines(processes.logs())) == 2
