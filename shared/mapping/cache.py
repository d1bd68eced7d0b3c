"""The mapping file as running processes use it: re-read when it changes, and when a changed file
does not validate, the last good mapping kept in use and the problem described (shared.runtime
records it in Redis for `status`). Light on purpose: the CLI reads it before the metrics exporter."""
from __future__ import annotations

import threading
import time
from datetime import datetime
from pathlib import Path

from pydantic import BaseModel

from shared.core.timeutil import BEIJING, format_wire, now_beijing
from shared.mapping.model import Mapping, MappingFileError, load_mapping


class MappingProblem(BaseModel):
    """The mapping file does not validate; the workers go on with the last good mapping."""

    since: str  # Beijing time the file was first found invalid
    error: str
    file_changed_at: str  # the invalid file's modification time (Beijing)
    last_good_from: str  # modification time of the file the mapping in use was read from (Beijing)
    last_good_fingerprint: str

    def line(self) -> str:
        return (f"mapping file invalid since {self.since}: {self.error}; "
                f"using the last good mapping from {self.last_good_from}")


class MappingCache:
    """The current mapping, re-parsed only when the file's mtime changes (checked at most once a second).

    A change that does not validate keeps the last good mapping in use and sets `problem` until the
    file validates again: an editor's half-saved file or a typo must not fail every stockout that
    arrives meanwhile. Without any good mapping yet (start-up), the error is raised."""

    def __init__(self, path: Path, check_every_s: float = 1.0) -> None:
        self.path = Path(path)
        self.check_every_s = check_every_s
        self._lock = threading.Lock()
        self._mapping: Mapping | None = None
        self._mapping_mtime: float | None = None
        self._mtime: float | None = None
        self._checked = 0.0
        self._loaded_at = ""
        self.problem: MappingProblem | None = None

    @property
    def loaded_at(self) -> str:
        """Beijing time this process last read a good mapping ("" before the first)."""
        return self._loaded_at

    @property
    def in_force_since(self) -> str:
        """Beijing modification time of the file the mapping in use was read from: every process
        re-reads a changed file within `check_every_s`, so that is when it came into force."""
        return _wall(self._mapping_mtime) if self._mapping is not None else ""

    def get(self, *, fresh: bool = False) -> Mapping:
        """`fresh`: look at the file now, not at most once every `check_every_s`."""
        now = time.monotonic()
        with self._lock:
            if self._mapping is None or fresh or now - self._checked >= self.check_every_s:
                self._checked = now
                mtime = self.path.stat().st_mtime if self.path.exists() else None
                if self._mapping is None or mtime != self._mtime:
                    self._reload(mtime)
            assert self._mapping is not None
            return self._mapping

    def _reload(self, mtime: float | None) -> None:
        try:
            mapping = load_mapping(self.path)
        except MappingFileError as err:
            if self._mapping is None:
                raise
            self._mtime = mtime  # not parsed again until the file changes again
            self.problem = MappingProblem(
                since=self.problem.since if self.problem else format_wire(now_beijing()),
                error=str(err),
                file_changed_at=_wall(mtime),
                last_good_from=_wall(self._mapping_mtime),
                last_good_fingerprint=self._mapping.fingerprint(),
            )
            return
        self._mapping, self._mapping_mtime, self._mtime, self.problem = mapping, mtime, mtime, None
        self._loaded_at = format_wire(now_beijing())


def _wall(mtime: float | None) -> str:
    if mtime is None:
        return "(file missing)"
    return format_wire(datetime.fromtimestamp(mtime, BEIJING))


_caches: dict[Path, MappingCache] = {}


def mapping_cache(path: Path) -> MappingCache:
    """One cache per file for the process, made before the pool forks (by the start-up check), so
    every pool process starts with the good mapping the worker started with."""
    path = Path(path)
    if path not in _caches:
        _caches[path] = MappingCache(path)
    return _caches[path]
