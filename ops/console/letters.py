"""The dead letters as the console lists them: their summaries kept in the console process and brought
up to date from the store's index on every read, so a page reads only the letters written since."""
from __future__ import annotations

import threading

from shared.deadletters import DeadLetter, DeadLetterStore


class LetterIndex:
    def __init__(self, store: DeadLetterStore) -> None:
        self.store = store
        self._known: dict[str, tuple[float, DeadLetter]] = {}
        self._lock = threading.Lock()

    def current(self) -> list[DeadLetter]:
        """Every letter's summary (DeadLetterStore.summaries), oldest failure first."""
        scored = self.store.scored_ids()
        with self._lock:
            known = self._known
            changed = [sid for sid, score in scored if known.get(sid, (None,))[0] != score]
            fresh = {x.stockout_id: x for x in self.store.summaries(changed)}
            now: dict[str, tuple[float, DeadLetter]] = {}
            for sid, score in scored:
                if sid in fresh:
                    now[sid] = (score, fresh[sid])
                elif sid in known and known[sid][0] == score:
                    now[sid] = known[sid]
                # else: claimed between the index read and the record read (requeued, purged): gone
            self._known = now
        return [letter for _, letter in now.values()]
