"""The mapping file reload keeps the last good mapping while the file does not validate, and says so once."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from shared.mapping.cache import MappingCache
from shared.mapping.model import MappingFileError
from shared.redis.keys import Keys
from shared.runtime import report_mapping_problem

ROOT = Path(__file__).resolve().parents[2]
GOOD = (ROOT / "demo" / "mapping.toml").read_text(encoding="utf-8")


def _write(path: Path, text: str, mtime: float) -> None:
    path.write_text(text, encoding="utf-8")
    os.utime(path, (mtime, mtime))  # a distinct mtime per version, as an editor's save gives


def test_an_invalid_change_keeps_the_last_good_mapping_until_the_file_validates(tmp_path):
    path = tmp_path / "mapping.toml"
    _write(path, GOOD, 1_000_000)
    cache = MappingCache(path, check_every_s=0)
    good = cache.get()
    assert cache.problem is None

    _write(path, GOOD.replace("[header]", "[headr]"), 1_000_010)
    assert cache.get() is good, "the last good mapping stays in use"
    problem = cache.problem
    assert problem is not None and "headr" in problem.error
    assert problem.last_good_from == "1970-01-12 21:46:40" and problem.file_changed_at == "1970-01-12 21:46:50"

    _write(path, GOOD + "\n# a second broken save\n[oops", 1_000_020)
    assert cache.get() is good
    assert cache.problem is not None and cache.problem.since == problem.since, "invalid since the first broken save"

    _write(path, GOOD.replace('"WH-GZ03"', '"WH-GZ04"'), 1_000_030)
    fixed = cache.get()
    assert fixed is not good and "WH-GZ04" in fixed.warehouses and cache.problem is None


def test_without_a_good_mapping_the_error_is_raised(tmp_path):
    path = tmp_path / "mapping.toml"
    _write(path, "[headr]\n", 1_000_000)
    with pytest.raises(MappingFileError, match="headr"):
        MappingCache(path, check_every_s=0).get()


def test_the_problem_is_recorded_and_logged_once_per_change(tmp_path, fake_redis, caplog):
    path = tmp_path / "mapping.toml"
    _write(path, GOOD, 1_000_000)
    caches = [MappingCache(path, check_every_s=0) for _ in range(3)]  # three pool processes
    for cache in caches:
        cache.get()
    _write(path, "not toml [", 1_000_010)
    caplog.set_level(logging.WARNING, logger="stockout_sync.mapping")
    for _ in range(2):
        for cache in caches:
            cache.get()
            report_mapping_problem(fake_redis, "t", cache.problem, path)
    lines = [r.getMessage() for r in caplog.records if "invalid since" in r.getMessage()]
    assert len(lines) == 1 and "using the last good mapping from 1970-01-12 21:46:40" in lines[0]
    assert fake_redis.get(Keys("t").mapping_invalid)

    _write(path, GOOD, 1_000_020)
    for cache in caches:
        cache.get()
        report_mapping_problem(fake_redis, "t", cache.problem, path)
    assert fake_redis.get(Keys("t").mapping_invalid) is None
    assert sum("valid again" in r.getMessage() for r in caplog.records) == 1


def test_a_stockout_the_mapping_cannot_express_looks_at_the_file_again_before_it_is_judged(tmp_path, fake_redis):
    """The cache looks at the file once a second (here: once an hour). A stockout that fails in that
    second after the file was saved broken waits for the fix, as it would a second later."""
    from shared.core.errors import MappingError
    from shared.core.settings import get_settings
    from shared.runtime import Runtime
    from worker.tasks import waits_for_mapping

    path = tmp_path / "mapping.toml"
    _write(path, GOOD, 1_000_000)
    rt = Runtime(get_settings().model_copy(update={"mapping_file": path}))
    rt.mappings = MappingCache(path, check_every_s=3600)
    rt.redis = fake_redis  # where the problem is recorded for status
    rt.mapping  # noqa: B018 - the first look
    unknown = MappingError("warehouse_no 'WH-NEW' is not in the mapping")
    assert not waits_for_mapping(unknown, rt), "a valid file: the stockout is refused"

    _write(path, GOOD.replace("[header]", "[headr]"), 1_000_010)
    assert rt.mapping and rt.mappings.problem is None, "not looked at again within the hour"
    assert waits_for_mapping(unknown, rt), "looked at again: broken, so the stockout waits for the fix"
    assert fake_redis.exists(Keys(rt.settings.redis_prefix).mapping_invalid), "and recorded for status"
    assert not waits_for_mapping(RuntimeError("not a mapping error"), rt)
