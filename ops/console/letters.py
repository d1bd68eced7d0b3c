"""The dead letters as the console lists them: their summaries kept in the console process and brought
up to date from the store's index on every read, so a page reads only the letters written since."""
from __future__ import annotations

import threading
import time

from shared.deadletters.model import DeadLetter
from shared.deadletters.store import DeadLetterStore

# A letter written again gets a new score: its failure time, by the writing host's clock. Each read looks
# at the scores since the previous read less SKEW_S (hosts whose clocks lag); a full read with scores
# every FULL_EVERY_S catches anything a clock further off hid.
SKEW_S = 10.0
FULL_EVERY_S = 60.0


class LetterIndex:
    def __init__(self, store: DeadLetterStore) -> None:
        self.store = store
        self._known: dict[str, tuple[float, DeadLetter]] = {}
        self._read_at = 0.0  # wall clock of the last read
        self._full_at = float("-inf")
        self._lock = threading.Lock()

    def current(self) -> list[DeadLetter]:
        """Every letter's summary (DeadLetterStore.summaries), oldest failure first."""
        with self._lock:
            started = time.time()
            if time.monotonic() - self._full_at >= FULL_EVERY_S:
                self._full_at = time.monotonic()
                ids, scored = None, self.store.scored_ids()
            else:
                ids, scored = self.store.ids(), self.store.scored_since(self._read_at - SKEW_S)
            known = self._known
            scores = dict(scored)
            order = ids if ids is not None else list(scores)
            changed = [sid for sid in order if sid not in known or (sid in scores and known[sid][0] != scores[sid])]
            fresh = {x.stockout_id: x for x in self.store.summaries(changed)}
            now: dict[str, tuple[float, DeadLetter]] = {}
            for sid in order:
                if sid in fresh:
                    now[sid] = (scores.get(sid, 0.0), fresh[sid])
                elif sid in known:
                    now[sid] = known[sid]
                # else: claimed between the index read and the record read (requeued, purged): gone
            self._known = now
            self._read_at = started
        return [letter for _, letter in now.values()]
