"""Every Redis key of the service, built in one place: `Keys(prefix)`. A value from outside (a stockout
id, an order number) only ever enters a key through `Keys.part`, inside a sub-namespace of its own, so
no WDT value can name one of our keys (docs/design.md, "Redis keys").
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

# The queues, which kombu keeps as Redis lists under these names (`Keys.queue`), hence named here.
STOCKOUT_QUEUE = "stockouts"
# Backfill messages: a queue of their own that workers read only when `stockouts` is empty (the
# transport's `sorted` queue order, shared/queue/app.py).
BACKFILL_QUEUE = "stockouts.backfill"
PRODUCER_QUEUE = "producer"
DEAD_LETTER_QUEUE = "dead_letter"
# kombu keeps a queue as one list plus one per priority step (`<queue>\x06\x16<p>`)
PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")

# What an id may look like to stand in a key as it is: what real WDT ids are (digits) and every id of
# ours, bounded. `~` is outside the set, so an encoded part never equals a plain one.
_PLAIN = re.compile(r"[0-9A-Za-z_.-]{1,64}")


def part(value: str) -> str:
    """An outside value as one key segment: as it is when plain and short, else `~` and a digest (the
    record it keys holds the value itself; keys are never read back into ids)."""
    if _PLAIN.fullmatch(value):
        return value
    return "~" + hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:40]


@dataclass(frozen=True)
class Keys:
    """`{p}` = REDIS_PREFIX. Fixed keys are properties; families keyed by an outside value are methods
    that encode it. The key table in docs/redis-keys.md is checked against this class by a test."""

    p: str

    # -- the broker (kombu's own layout under `global_keyprefix`) -------------------------------
    @property
    def broker_prefix(self) -> str:
        return f"{self.p}:"

    def queue(self, name: str, suffix: str = "") -> str:
        """A kombu queue list (`suffix`: one of its priority sub-lists)."""
        return f"{self.p}:{name}{suffix}"

    def queue_lists(self, name: str) -> tuple[str, ...]:
        """Every list a kombu queue keeps its messages in: the queue's own and its priority sub-lists."""
        return tuple(self.queue(name, suffix) for suffix in PRIORITY_SUFFIXES)

    @property
    def unacked(self) -> str:
        return f"{self.p}:unacked"

    def binding(self, queue: str) -> str:
        return f"{self.p}:_kombu.binding.{queue}"

    @property
    def everything(self) -> str:
        """The SCAN pattern of every key of this prefix."""
        return f"{self.p}:*"

    # -- per stockout: marks, locks, attempts ---------------------------------------------------
    def mark_bucket(self, n: int) -> str:
        """A hash of done/queued marks of canonical numeric ids (`n` = id // bucket size)."""
        return f"{self.p}:mark:{n}"

    def mark_hashed_bucket(self, n: int) -> str:
        """A hash of marks of other ids, spread by a checksum; the field is the whole id."""
        return f"{self.p}:mark:x{n}"

    def lock(self, sid: str) -> str:
        return f"{self.p}:lock:{part(sid)}"

    def attempts(self, sid: str) -> str:
        return f"{self.p}:attempts:{part(sid)}"

    @property
    def inflight(self) -> str:
        """stockout id (a field, never a key) → `<ms>|<generation>`: when its key was first sent to BIP."""
        return f"{self.p}:inflight"

    # -- totals ---------------------------------------------------------------------------------
    @property
    def saved(self) -> str:
        return f"{self.p}:stats:saved"

    @property
    def last_saved_at(self) -> str:
        return f"{self.p}:stats:last_saved_at"

    # -- the producer -----------------------------------------------------------------------------
    @property
    def cursor(self) -> str:
        return f"{self.p}:cursor"

    @property
    def epoch(self) -> str:
        """The state's epoch (shared/redis/epoch.py): written once when the state is created."""
        return f"{self.p}:epoch"

    @property
    def poll_lock(self) -> str:
        return f"{self.p}:poll:lock"

    @property
    def poll_last(self) -> str:
        return f"{self.p}:poll:last"

    @property
    def beat_heartbeat(self) -> str:
        return f"{self.p}:beat:heartbeat"

    @property
    def window_ledger(self) -> str:
        return f"{self.p}:window:ledger"

    @property
    def window_checked(self) -> str:
        return f"{self.p}:window:checked"

    @property
    def backfill_jobs(self) -> str:
        return f"{self.p}:backfill:jobs"

    def backfill_job(self, job_id: str) -> str:
        return f"{self.p}:backfill:job:{part(job_id)}"

    @property
    def backfill_paused(self) -> str:
        return f"{self.p}:backfill:paused"

    @property
    def backfill_lock(self) -> str:
        """The running backfill task's token (the live poll has `poll_lock`)."""
        return f"{self.p}:backfill:lock"

    @property
    def reconcile_reports(self) -> str:
        return f"{self.p}:reconcile:reports"

    # -- dead letters -----------------------------------------------------------------------------
    def dlq_record(self, sid: str) -> str:
        return f"{self.p}:dlq:rec:{part(sid)}"

    def dlq_legacy_record(self, sid: str) -> str:
        """Where versions before the `rec:` family kept a letter; read once, by the layout upgrade."""
        return f"{self.p}:dlq:{sid}"

    def dlq_requeuing(self, sid: str) -> str:
        return f"{self.p}:dlq:requeuing:{part(sid)}"

    def dlq_lease(self, sid: str) -> str:
        return f"{self.p}:dlq:lease:{part(sid)}"

    def dlq_history(self, sid: str) -> str:
        return f"{self.p}:dlq:history:{part(sid)}"

    @property
    def dlq_index(self) -> str:
        return f"{self.p}:dlq:index"

    @property
    def dlq_entries(self) -> str:
        return f"{self.p}:dlq:entries"

    @property
    def dlq_orders(self) -> str:
        return f"{self.p}:dlq:orders"

    @property
    def dlq_parked(self) -> str:
        return f"{self.p}:dlq:parked"

    @property
    def dlq_layout(self) -> str:
        """The dead-letter layout version this Redis holds (absent: before `rec:`)."""
        return f"{self.p}:dlq:layout"

    # -- shared limits and health -----------------------------------------------------------------
    def rate_limit(self, name: str) -> str:
        """The GCRA state of limiter `name`; `:aimd` and `:granted` beside it hold its adaptive rate."""
        return f"{self.p}:rl:{name}"

    def rate_limit_adaptive(self, name: str) -> str:
        return f"{self.rate_limit(name)}:aimd"

    def rate_limit_grants(self, name: str) -> str:
        return f"{self.rate_limit(name)}:granted"

    @property
    def breaker(self) -> str:
        return f"{self.p}:breaker"

    @property
    def clocks(self) -> str:
        """hash: `<role>@<host>` → JSON {skew_s, at, until}: each process's clock against Redis TIME."""
        return f"{self.p}:clocks"

    @property
    def mapping_invalid(self) -> str:
        return f"{self.p}:mapping:invalid"

    @property
    def mapping_seen(self) -> str:
        """The file version whose problem was last told (one process tells per change)."""
        return f"{self.p}:mapping:invalid:seen"

    @property
    def bip_gateway(self) -> str:
        return f"{self.p}:bip:gateway"

    @property
    def bip_token(self) -> str:
        return f"{self.p}:bip:token"

    @property
    def bip_token_lock(self) -> str:
        return f"{self.p}:bip:token:lock"

    # -- what the alerts have told ------------------------------------------------------------------
    @property
    def alerts_lock(self) -> str:
        return f"{self.p}:alerts:lock"

    @property
    def alerts_dlq_cursor(self) -> str:
        """Index score of the newest dead letter counted."""
        return f"{self.p}:alerts:dlq:cursor"

    @property
    def alerts_dlq_pending(self) -> str:
        """reason → JSON {count, examples, since} not yet told."""
        return f"{self.p}:alerts:dlq:pending"

    @property
    def alerts_dlq_sent(self) -> str:
        """reason → epoch seconds of its last message."""
        return f"{self.p}:alerts:dlq:sent"

    @property
    def alerts_conditions(self) -> str:
        """condition → JSON {since, sent, firing}."""
        return f"{self.p}:alerts:conditions"

    @property
    def alerts_breaker(self) -> str:
        return f"{self.p}:alerts:breaker"

    @property
    def alerts_reconcile(self) -> str:
        return f"{self.p}:alerts:reconcile"

    # -- the operator console (ops/console) --------------------------------------------------------
    @property
    def audit(self) -> str:
        """List: the console's audit trail, newest first, capped."""
        return f"{self.p}:audit"

    def console_login_failures(self, who: str) -> str:
        """Failed logins of one user name or client address (`who` = "user:<name>" / "addr:<ip>"):
        always a digest, so a name someone typed never shows in a key."""
        return f"{self.p}:console:login:{hashlib.sha256(who.encode('utf-8', 'surrogatepass')).hexdigest()[:32]}"
