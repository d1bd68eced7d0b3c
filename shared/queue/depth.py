"""How many stockout messages Redis holds right now: the number backpressure and `status` go by.

kombu's Redis transport keeps a queue as a list, plus one list per priority step (`<queue>\\x06\\x16<p>`),
and every message delivered to a worker but not yet acknowledged as an entry of the `unacked` hash
(retries waiting for their countdown included). All of them are whole messages in Redis memory.
"""

from __future__ import annotations

from typing import Any

import redis

from shared.redis.keys import BACKFILL_QUEUE, PRIORITY_SUFFIXES, STOCKOUT_QUEUE, Keys

STOCKOUT_QUEUES = (STOCKOUT_QUEUE, BACKFILL_QUEUE)


def ask_lengths(pipe: Any, k: Keys, queues: tuple[str, ...]) -> None:
    """Queue in `pipe` the length of every list of each queue; `lengths_of` reads the answers."""
    for queue in queues:
        for key in k.queue_lists(queue):
            pipe.llen(key)


def lengths_of(values: list[Any], queues: tuple[str, ...]) -> tuple[dict[str, int], list[Any]]:
    """Each queue's length from the answers `ask_lengths` asked for, and the answers after them."""
    n = len(PRIORITY_SUFFIXES)
    lengths = {queue: int(sum(values[i * n:(i + 1) * n])) for i, queue in enumerate(queues)}
    return lengths, values[len(queues) * n:]


def queue_lengths(r: redis.Redis, prefix: str, queues: tuple[str, ...]) -> dict[str, int]:
    """Each queue's length with its priority sub-queues, in one round trip."""
    pipe = r.pipeline(transaction=False)
    ask_lengths(pipe, Keys(prefix), queues)
    return lengths_of(pipe.execute(), queues)[0]


def backlog(r: redis.Redis, prefix: str) -> int:
    """Stockout messages waiting (both queues) plus all unacknowledged ones."""
    k = Keys(prefix)
    pipe = r.pipeline(transaction=False)
    ask_lengths(pipe, k, STOCKOUT_QUEUES)
    pipe.hlen(k.unacked)
    lengths, (unacked,) = lengths_of(pipe.execute(), STOCKOUT_QUEUES)
    return sum(lengths.values()) + int(unacked)


def live_backlog(r: redis.Redis, prefix: str) -> int:
    """Live messages waiting: what the regular poll's own backpressure goes by (backfill never holds it up)."""
    return queue_lengths(r, prefix, (STOCKOUT_QUEUE,))[STOCKOUT_QUEUE]
