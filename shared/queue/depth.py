"""How many stockout messages Redis holds right now: the number backpressure and `status` go by.

kombu's Redis transport keeps a queue as a list, plus one list per priority step (`<queue>\\x06\\x16<p>`),
and every message delivered to a worker but not yet acknowledged as an entry of the `unacked` hash
(retries waiting for their countdown included). All of them are whole messages in Redis memory.
"""

from __future__ import annotations

import redis

from shared.redis.keys import BACKFILL_QUEUE, STOCKOUT_QUEUE, Keys

PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")
STOCKOUT_QUEUES = (STOCKOUT_QUEUE, BACKFILL_QUEUE)


def queue_lengths(r: redis.Redis, prefix: str, queues: tuple[str, ...]) -> dict[str, int]:
    """Each queue's length with its priority sub-queues, in one round trip."""
    pipe = r.pipeline(transaction=False)
    for queue in queues:
        for suffix in PRIORITY_SUFFIXES:
            pipe.llen(Keys(prefix).queue(queue, suffix))
    lengths = pipe.execute()
    n = len(PRIORITY_SUFFIXES)
    return {queue: int(sum(lengths[i * n : (i + 1) * n])) for i, queue in enumerate(queues)}


def backlog(r: redis.Redis, prefix: str) -> int:
    """Stockout messages waiting (both queues) plus all unacknowledged ones."""
    pipe = r.pipeline(transaction=False)
    for queue in STOCKOUT_QUEUES:
        for suffix in PRIORITY_SUFFIXES:
            pipe.llen(Keys(prefix).queue(queue, suffix))
    pipe.hlen(Keys(prefix).unacked)
    return int(sum(pipe.execute()))


def live_backlog(r: redis.Redis, prefix: str) -> int:
    """Live messages waiting: what the regular poll's own backpressure goes by (backfill never holds it up)."""
    return queue_lengths(r, prefix, (STOCKOUT_QUEUE,))[STOCKOUT_QUEUE]
