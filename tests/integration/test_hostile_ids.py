"""No stockout id reaches into our own keys: ids that are the dead-letter store's own key names, or
carry ':' and glob characters, are saved or dead-lettered like any other, and every command that
takes an id answers without a traceback. A dead letter that cannot be written backs off."""
from __future__ import annotations

import json
import time

import pytest

from ops.processes import wait_until
from producer.poll import poll_once
from shared.deadletters.store import DeadLetterStore
from shared.queue.publisher import publish_stockout
from shared.redis import breaker
from shared.redis.breaker import DEAD_LETTER_SCOPE
from shared.redis.keys import Keys
from shared.runtime import runtime
from tests.cli import cli
from tests.integration.faults import eligible, recent, saved
from tests.progress import pipeline

pytestmark = pytest.mark.integration

HOSTILE = ["index", "entries", "orders", "parked", "a:b*c"]


def _copies(sandbox, template: dict, ids: list[str], *, broken: bool) -> dict[str, dict]:
    """`template` under each id (broken: its warehouse unmapped), added to the sandbox's WDT."""
    made = {}
    for i, sid in enumerate(ids):
        copy = json.loads(json.dumps(template))
        copy["stockout_id"] = sid
        copy["order_no"] = f"CK-HOSTILE-{'B' if broken else 'G'}{i}"
        for line in copy["details_list"]:
            line["stockout_id"] = sid
        if broken:
            copy["warehouse_no"] = "WH-NOPE"
        made[sid] = copy
    sandbox.add_stockouts(list(made.values()))
    return made


def _template(stockouts: list[dict]) -> dict:
    return next(s for s in stockouts if s["status"] in ("95", "110") and s["details_list"])


@pytest.mark.invariant(11)
def test_ids_that_name_our_own_keys_are_saved_or_dead_lettered_and_every_command_takes_them(
    sandbox, processes, redis_client
):
    stockouts = recent(sandbox, 5)
    template = _template(stockouts)
    good = _copies(sandbox, template, ["index-ok", "entries-ok", "orders-ok", "parked-ok", "x:y*z"], broken=False)
    bad = _copies(sandbox, template, HOSTILE, broken=True)
    processes.worker(concurrency=2)
    poll_once(runtime(), publish_stockout)
    letters = DeadLetterStore(redis_client, "t")
    expected_saved = eligible(stockouts) | set(good)
    wait_until(lambda: expected_saved <= set(saved(sandbox)) and set(bad) <= set(letters.ids()),
               message="hostile ids saved and dead-lettered", progress=pipeline(sandbox, redis_client))
    assert max(saved(sandbox).values()) == 1
    assert redis_client.type(Keys("t").dlq_index) == b"zset" and redis_client.type(Keys("t").dlq_entries) == b"hash"
    assert not breaker.is_open(redis_client, "t", DEAD_LETTER_SCOPE)

    listed = json.loads(cli(processes.env, "dlq", "list", "--json").stdout)
    assert {letter["stockout_id"] for letter in listed} >= set(bad)
    status = cli(processes.env, "status", "--json")
    assert status.returncode in (0, 1) and "Traceback" not in status.stderr
    assert json.loads(status.stdout)
    for argv in (["dlq", "show", "index"], ["dlq", "show", "a:b*c", "--json"], ["trace", "index"],
                 ["trace", "a:b*c", "--json"], ["trace", "orders-ok"]):
        result = cli(processes.env, *argv)
        assert result.returncode in (0, 1) and "Traceback" not in result.stderr, (argv, result.stderr)
    assert "WH-NOPE" in cli(processes.env, "dlq", "show", "index").stdout
    purged = cli(processes.env, "dlq", "purge", "entries", "a:b*c", "--yes")
    assert purged.returncode == 0 and "Traceback" not in purged.stderr
    assert set(letters.ids()) >= {"index", "orders", "parked"} and not {"entries", "a:b*c"} & set(letters.ids())


def test_a_dead_letter_that_cannot_be_written_backs_off_opens_the_breaker_and_is_written_once_it_can(
    sandbox, processes, redis_client
):
    # the order-number index holding the wrong type: every letter fails to be written (WRONGTYPE)
    redis_client.set(Keys("t").dlq_orders, "not a hash")
    (sid,) = _copies(sandbox, _template(recent(sandbox, 3)), ["7700001"], broken=True)
    processes.worker(concurrency=1)
    poll_once(runtime(), publish_stockout)
    failed = "could not be dead-lettered"
    wait_until(lambda: breaker.is_open(redis_client, "t", DEAD_LETTER_SCOPE), message="the deadletters breaker")
    first = time.monotonic()
    wait_until(lambda: processes.logs().count(failed) >= 3, message="three tries to write the letter")
    # backoff between tries (RETRY_BACKOFF_MAX_S = 2 here: at least 1 s each), never a requeue at once
    assert time.monotonic() - first >= 1.0
    status = cli(processes.env, "status")
    assert status.returncode == 1 and "dead letters cannot be written" in status.stdout

    redis_client.delete(Keys("t").dlq_orders)
    letters = DeadLetterStore(redis_client, "t")
    wait_until(lambda: sid in letters.ids(), message="the letter written once the store is writable")
    wait_until(lambda: not breaker.is_open(redis_client, "t", DEAD_LETTER_SCOPE), message="the breaker closed")
    assert sid not in saved(sandbox)
