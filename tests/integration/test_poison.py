"""Poison messages: entries a broken producer pushes straight into our queues are quarantined as dead
letters with their bytes and reason, and a running worker saves every good stockout around them."""
from __future__ import annotations

import base64
import json
import pickle
import subprocess
import sys
from collections.abc import Callable

import pytest

from ops.processes import wait_until
from producer.poll import poll_once
from shared.deadletters.store import DeadLetterStore
from shared.queue.app import POLL_TASK, SYNC_TASK
from shared.queue.poison import malformed_id
from shared.queue.publisher import _Page, publish_stockout
from shared.runtime import runtime
from tests.cli import cli
from tests.integration.conftest import use_env
from tests.integration.faults import eligible, outcome, recent, saved
from tests.progress import pipeline

pytestmark = pytest.mark.integration

MAX_BYTES = 64 * 1024  # MAX_MESSAGE_BYTES for the worker here: its lowest allowed value


def _envelope(body: bytes | str, i: int, *, task: str = SYNC_TASK, content_type: str = "application/json",
              headers: dict | None = None, properties: bool = True) -> bytes:
    """An entry as kombu's Redis transport writes one, with the parts a test wants broken."""
    entry: dict = {
        "body": body if isinstance(body, str) else base64.b64encode(body).decode(),
        "content-encoding": "utf-8",
        "content-type": content_type,
        "headers": {"lang": "py", "task": task, "id": f"poison-{i}", "retries": 0, **(headers or {})},
    }
    if properties:
        entry["properties"] = {"delivery_tag": f"tag-{i}", "body_encoding": "base64", "priority": 0,
                               "delivery_info": {"exchange": "", "routing_key": "stockouts"}}
    return json.dumps(entry).encode()


def _body(args: list, kwargs: dict) -> bytes:
    return json.dumps([args, kwargs, {}]).encode()


# (kind, entry number i → the raw entry, words the reason must contain)
KINDS: list[tuple[str, Callable[[int], bytes], str]] = [
    ("not UTF-8", lambda i: b"\xff\xfe\x00 broken " + str(i).encode(), "not UTF-8"),
    ("not JSON", lambda i: f"this is not JSON {{ {i}".encode(), "not JSON"),
    ("a JSON list", lambda i: json.dumps([i, "stockout"]).encode(), "JSON array, not an object"),
    ("a JSON string", lambda i: json.dumps(f"stockout {i}").encode(), "JSON string, not an object"),
    ("no properties", lambda i: _envelope(_body([], {"stockout": {"n": i}}), i, properties=False), "delivery_tag"),
    ("body not base64", lambda i: _envelope(f"%%% not base64 {i} %%%", i), "body is not base64"),
    ("body not JSON", lambda i: _envelope(f"{{not json {i}".encode(), i), "body is not JSON"),
    ("body an object", lambda i: _envelope(json.dumps({"stockout": {"n": i}}).encode(), i),
     "not [args, kwargs, options]"),
    ("no kwargs", lambda i: _envelope(json.dumps([[]]).encode() + b" " * (i % 7), i, headers={"n": i}),
     "not [args, kwargs, options]"),
    ("empty kwargs", lambda i: _envelope(_body([], {}), i), "missing a required argument: 'stockout'"),
    ("wrong kwargs", lambda i: _envelope(_body([], {"stock": {"n": i}}), i), "missing a required argument: 'stockout'"),
    ("stockout not an object", lambda i: _envelope(_body([], {"stockout": [i]}), i), "stockout is a JSON array"),
    ("too many args", lambda i: _envelope(_body([{"n": i}, 2, 3], {}), i), "wrong arguments"),
    ("unknown task", lambda i: _envelope(_body([], {"stockout": {"n": i}}), i, task="stockout_sync.nope"),
     "unknown task 'stockout_sync.nope'"),
    ("protocol 1", lambda i: _envelope(json.dumps({"task": SYNC_TASK, "id": str(i), "args": [], "kwargs": {}}).encode(),
                                       i, task=""), "no task name"),
    ("pickle", lambda i: _envelope(pickle.dumps(((), {"stockout": {"n": i}}, {})), i,
                                   content_type="application/x-python-serialize"), "content type"),
    ("eta not a time", lambda i: _envelope(_body([], {"stockout": {"n": i}}), i, headers={"eta": f"soon {i}"}),
     "headers.eta is not a time"),
    ("oversized", lambda i: _envelope(_body([], {"stockout": {"n": i, "pad": "x" * MAX_BYTES}}), i),
     "over MAX_MESSAGE_BYTES=65536"),
    ("poll task with kwargs", lambda i: _envelope(_body([], {"since": i}), i, task=POLL_TASK), "wrong arguments"),
]
MALFORMED_COUNT = 200
GOOD_COUNT = 300


def _good_entries(stockouts: list[dict]) -> list[bytes]:
    page = _Page("stockouts")
    for raw in stockouts:
        page.add(raw, raw["stockout_id"])
    return page.entries


@pytest.mark.invariant(6)
def test_malformed_entries_are_dead_letters_and_the_worker_saves_every_good_stockout(
    sandbox, processes, redis_client,
):
    stockouts = [s for s in recent(sandbox, GOOD_COUNT * 2) if s["stockout_id"] in eligible([s])][:GOOD_COUNT]
    assert len(stockouts) == GOOD_COUNT
    good = _good_entries(stockouts)
    bad = [(KINDS[i % len(KINDS)], KINDS[i % len(KINDS)][1](i)) for i in range(MALFORMED_COUNT)]
    assert len({entry for _, entry in bad}) == MALFORMED_COUNT, "every malformed entry is a different one"
    # interleaved the way a broken producer beside ours would leave them: 3 good, 2 bad, …
    entries: list[bytes] = []
    good_iter, bad_iter = iter(good), iter(entry for _, entry in bad)
    for _ in range(GOOD_COUNT // 3):
        entries += [next(good_iter) for _ in range(3)] + [next(bad_iter) for _ in range(2)]
    worker = processes.worker(concurrency=4, env={"MAX_MESSAGE_BYTES": str(MAX_BYTES)})
    for start in range(0, len(entries), 50):  # while the worker runs, as a producer would
        redis_client.lpush("t:stockouts", *entries[start:start + 50])

    letters = DeadLetterStore(redis_client, "t")
    expected = {malformed_id(entry): kind for kind, entry in bad}
    wanted = {s["stockout_id"] for s in stockouts}
    wait_until(lambda: wanted <= set(saved(sandbox)) and set(expected) <= set(letters.ids()), 90,
               message="every good stockout saved and every malformed entry dead-lettered")

    assert worker.poll() is None, "a malformed entry stopped the worker"
    assert max(saved(sandbox).values()) == 1, "a stockout was saved twice"
    by_id = {letter.stockout_id: letter for letter in letters.all()}
    assert set(by_id) == set(expected), "only the malformed entries are dead letters"
    for sid, (kind, _, words) in expected.items():
        letter = by_id[sid]
        assert letter.malformed and letter.queue == "stockouts", kind
        assert letter.reason.startswith("malformed message: ") and words in letter.reason, f"{kind}: {letter.reason}"
        assert letter.raw, f"{kind}: the entry is kept"
    assert redis_client.llen("t:stockouts") == 0
    row = outcome(f"poison: {MALFORMED_COUNT} malformed entries ({len(KINDS)} kinds) among good stockouts",
                  sandbox, wanted, letters)
    assert row["saved"] == GOOD_COUNT and row["lost"] == 0 and row["duplicates"] == 0


def test_the_producer_queue_quarantines_too(sandbox, processes, redis_client):
    """The beat's own consumer (queue `producer`) goes on after entries it cannot run."""
    beat = processes.beat()
    bad = [kind[1](1000 + n) for n, kind in enumerate(KINDS[:6])]
    redis_client.lpush("t:producer", *bad)
    letters = DeadLetterStore(redis_client, "t")
    expected = {malformed_id(entry) for entry in bad}
    wait_until(lambda: expected <= set(letters.ids()), 30, message="the producer's malformed entries dead-lettered")
    assert all(letter.queue == "producer" for letter in letters.all())
    assert beat.poll() is None, "a malformed entry stopped beat's consumer"


def test_dlq_commands_show_refuse_and_purge_malformed_letters(service, redis_client):
    """list and show name the reason and the bytes; requeue refuses; purge removes."""
    from shared.queue.poison import quarantine

    store = DeadLetterStore(redis_client, "t")
    letter = quarantine(store, b"\xff{\"x\": \x1b[31m", "not UTF-8 text (byte 0)", queue="stockouts")

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "ops.cli", "dlq", *args], env=service_env(service),
                              capture_output=True, text=True, timeout=60)

    listed = cli("list")
    assert listed.returncode == 0 and "malformed message: not UTF-8" in listed.stdout, listed.stdout
    shown = cli("show", letter.stockout_id)
    assert shown.returncode == 0, shown.stderr
    assert "\\xff" in shown.stdout and "\\x1b" in shown.stdout and "\x1b[31m" not in shown.stdout, shown.stdout
    refused = cli("requeue", letter.stockout_id)
    assert refused.returncode == 1 and "nothing to sync" in refused.stdout, refused.stdout
    assert store.get(letter.stockout_id) is not None, "a refused letter stays"
    assert redis_client.llen("t:stockouts") == 0
    purged = cli("purge", "--yes", letter.stockout_id)
    assert purged.returncode == 0 and "purged 1" in purged.stdout
    assert store.get(letter.stockout_id) is None


def service_env(service: dict[str, str]) -> dict[str, str]:
    import os

    return {**os.environ, **service, "COLUMNS": "250"}


@pytest.mark.invariant(6)
def test_a_fatal_worker_error_exits_non_zero(service, tmp_path):
    """Celery's "Unrecoverable error" (injected into Celery's consumer from outside our code, by a
    sitecustomize on PYTHONPATH) ends the worker with exit 1, not 0, so a supervisor restarts it."""
    (tmp_path / "sitecustomize.py").write_text(
        "import celery.worker.consumer.consumer as c\n"
        "def start(self):\n    raise RuntimeError('injected consumer failure')\n"
        "c.Consumer.start = start\n", encoding="utf-8")
    env = {**service_env(service), "PYTHONPATH": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "ops.cli", "worker", "--concurrency=1"], env=env,
                          capture_output=True, text=True, timeout=90)
    assert "Unrecoverable error: RuntimeError('injected consumer failure')" in done.stderr, done.stderr[-2000:]
    assert done.returncode == 1


def test_a_stockout_too_large_for_a_message_is_held_as_its_own_letter_and_requeued_once_the_limit_is_raised(
        sandbox, processes, redis_client, monkeypatch):
    """The producer never sends what every worker would quarantine unread (and a malformed letter
    cannot be requeued): the stockout becomes a dead letter kept whole, `dlq requeue` sends it later."""
    stockouts = recent(sandbox, 8)
    wanted = eligible(stockouts)
    big_id = sorted(wanted)[0]
    big = next({**s, "attachment_note": "附" * 30_000} for s in stockouts if s["stockout_id"] == big_id)
    sandbox.add_stockouts([big])  # ~90 KB of UTF-8 in one field: over the 64 KiB limit once encoded
    small = {**processes.env, "MAX_MESSAGE_BYTES": str(MAX_BYTES)}
    use_env(monkeypatch, small)

    summary = poll_once(runtime(), publish_stockout)
    assert summary.fetched >= len(wanted)
    letters = DeadLetterStore(redis_client, "t")
    letter = letters.get(big_id)
    assert letter is not None and letter.stage == "publish" and letter.error_class == "MessageTooLarge"
    assert f"over MAX_MESSAGE_BYTES={MAX_BYTES}" in letter.message and f"dlq requeue {big_id}" in letter.message
    assert letter.stockout["attachment_note"] == big["attachment_note"]  # kept whole, to be sent later
    queued = redis_client.lrange("t:stockouts", 0, -1)
    assert len(queued) == len(wanted) - 1 and all(len(e) <= MAX_BYTES for e in queued)
    assert not any(big_id.encode() in e for e in queued)

    # requeued at the same limit, it is held again (the letter goes on, with its history)
    again = cli(small, "dlq", "requeue", big_id)
    assert again.returncode == 0, again.stderr
    assert [h.event for h in letters.get(big_id).history] == ["dead_lettered", "requeued", "dead_lettered"]

    # the operator raises the limit for producer and workers alike, then requeues: saved once
    raised = {**processes.env, "MAX_MESSAGE_BYTES": str(1024 * 1024)}
    processes.env = raised
    processes.worker(concurrency=2)
    done = cli(raised, "dlq", "requeue", big_id)
    assert done.returncode == 0 and "requeued 1" in done.stdout, done.stdout + done.stderr
    wait_until(lambda: wanted <= set(saved(sandbox)), message="every stockout saved, the large one too",
               progress=pipeline(sandbox, redis_client))
    assert saved(sandbox)[big_id] == 1 and letters.get(big_id) is None
