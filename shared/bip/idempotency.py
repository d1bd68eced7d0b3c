"""BIP's resubmitCheckKey for a stockout (≤ 32 characters), and which keys a found record may carry
to count as ours. Why the WDT account is in the key and how older keys carry over: docs/design.md,
"Exactly once when memories fail"."""
from __future__ import annotations

import hashlib
import re

RESUBMIT_KEY_MAX = 32
_READABLE_PREFIX = "wdtso-"
_HASH_SALT = "stockout-sync:wdt-stockout:"
_ACCOUNT_SALT = "stockout-sync:wdt-account:"
_READABLE_ID = re.compile(r"^[A-Za-z0-9_.]+$")


def resubmit_key(stockout_id: str, generation: int = 0, account: str = "") -> str:
    """BIP's resubmitCheckKey for a stockout: a function of the WDT account, the id and the key
    generation alone — never of the attempt, the time or the worker, so every retry, redelivery and
    requeue of one generation sends the same key.

    With an account (KEY_NAMESPACE or WDT_SID): the MD5 hex of a salt + account + NUL + id (+ NUL + g),
    so two shops whose ids coincide never share a key in one tenant. Without one, the key of versions
    before the account was added (the "legacy" key): `wdtso-<id>[-g<g>]` when the id is short ASCII
    (≤ 26 characters of [A-Za-z0-9_.]), else the MD5 hex of another salt + id (+ NUL + g).

    Injective: a readable key contains `wdtso-` (not hex) so it never equals a hashed one; `-` never
    occurs in a readable id; two hashed keys would need an MD5 collision (or an id holding a NUL).
    Generation g > 0 exists because BIP remembers a key after its record was deleted: a record proven
    deleted can only be saved again under a new key (`reconcile --requeue-missing` sends g + 1).
    """
    if not isinstance(stockout_id, str) or not stockout_id:
        raise ValueError(f"stockout_id must be a non-empty string, got {stockout_id!r}")
    if isinstance(generation, bool) or not isinstance(generation, int) or generation < 0:
        raise ValueError(f"generation must be an integer ≥ 0, got {generation!r}")
    suffix = f"\x00{generation}" if generation else ""
    if account:
        return hashlib.md5(f"{_ACCOUNT_SALT}{account}\x00{stockout_id}{suffix}".encode()).hexdigest()
    readable = _READABLE_PREFIX + stockout_id + (f"-g{generation}" if generation else "")
    if len(readable) <= RESUBMIT_KEY_MAX and _READABLE_ID.match(stockout_id):
        return readable
    return hashlib.md5((_HASH_SALT + stockout_id + suffix).encode("utf-8")).hexdigest()


def our_keys(stockout_id: str, account: str, *, generations: int = 0, legacy: bool = False) -> frozenset[str]:
    """Every key a record of ours for this stockout may carry: each generation up to `generations`
    under the account, and with `legacy` (a state inherited from a version without accounts) the
    account-less keys too."""
    keys = {resubmit_key(stockout_id, g, account) for g in range(generations + 1)}
    if legacy and account:
        keys |= {resubmit_key(stockout_id, g) for g in range(generations + 1)}
    return frozenset(keys)
