"""REDIS_URL=sentinel://…: parsed once, the same way for kombu and for our own client, with errors that
name the variable and the part (never the password)."""
from __future__ import annotations

import kombu
import pytest
from kombu.transport import redis as kombu_redis
from pydantic import ValidationError

from shared.core.redis_url import parse_sentinel_url
from shared.core.settings import Settings
from shared.queue import broker
from shared.queue.app import celery_config
from shared.redis.conn import connect

URL = "sentinel://:p%40ss@h1:26379;sentinel://h2:26380;sentinel://h3/2"


def settings(**kw) -> Settings:
    return Settings(_env_file=None, **kw)


def test_parse_takes_credentials_and_database_from_any_part():
    parsed = parse_sentinel_url(URL)
    assert parsed.sentinels == (("h1", 26379), ("h2", 26380), ("h3", 26379))
    assert parsed.password == "p@ss" and parsed.username is None and parsed.db == 2


@pytest.mark.parametrize(("url", "message"), [
    ("sentinel://:secret@h1:x", "port that is not a number"),
    ("sentinel://:secret@h1;redis://h2", "scheme 'redis'"),
    ("sentinel://h1/1;sentinel://h2/2", "different databases"),
    ("sentinel://h1/zero", "database 'zero'"),
    ("sentinel://", "no host"),
])
def test_bad_sentinel_urls_name_the_variable_and_the_part_but_not_the_password(url, message):
    with pytest.raises(ValueError, match=message) as err:
        parse_sentinel_url(url)
    assert "REDIS_URL" in str(err.value) and "secret" not in str(err.value)


def test_settings_need_the_master_name_and_refuse_it_without_sentinel():
    with pytest.raises(ValidationError, match="REDIS_SENTINEL_MASTER"):
        settings(redis_url=URL)
    with pytest.raises(ValidationError, match="REDIS_SENTINEL_MASTER='mymaster' is set but REDIS_URL"):
        settings(redis_url="redis://127.0.0.1:6379/0", redis_sentinel_master="mymaster")
    with pytest.raises(ValidationError, match="REDIS_CA_CERTS"):
        settings(redis_url=URL, redis_sentinel_master="m", redis_ca_certs="/ca.pem")


def test_celery_uses_the_hardened_sentinel_transport_with_the_same_reading_of_the_url():
    s = settings(redis_url=URL, redis_sentinel_master="mymaster", redis_sentinel_password="sentinel-pw")
    conf = celery_config(s)
    assert conf["broker_transport"] == broker.SENTINEL_TRANSPORT
    options = conf["broker_transport_options"]
    assert options["master_name"] == "mymaster"
    assert options["sentinel_kwargs"] == {"password": "sentinel-pw"}
    assert options["global_keyprefix"] == f"{s.redis_prefix}:"
    # kombu reads credentials and database from the first part only: every part carries them
    connection = kombu.Connection(conf["broker_url"], transport=conf["broker_transport"])
    assert connection.password == "p@ss" and connection.virtual_host == "2"
    assert connection.alt == [f"sentinel://:p%40ss@{h}:{p}/2" for h, p in (("h1", 26379), ("h2", 26380), ("h3", 26379))]
    assert {"p%40ss", "p@ss", "sentinel-pw"} <= set(s.secret_values())


def test_a_plain_url_keeps_the_plain_hardened_transport():
    conf = celery_config(settings(redis_url="redis://127.0.0.1:6379/3"))
    assert conf["broker_transport"] == broker.TRANSPORT and "master_name" not in conf["broker_transport_options"]


def test_the_sentinel_channel_drops_non_messages_as_the_plain_one_does():
    assert issubclass(broker.SentinelTransport.Channel, kombu_redis.SentinelChannel)
    assert broker.SentinelTransport.Channel._brpop_read is broker.Transport.Channel._brpop_read
    assert broker.Transport.Channel._brpop_read is not kombu_redis.Channel._brpop_read


def test_our_client_asks_the_sentinels_for_the_named_master():
    client = connect(URL, master="mymaster", sentinel_password="sentinel-pw", socket_timeout=3)
    pool = client.connection_pool
    assert pool.service_name == "mymaster" and pool.is_master
    assert pool.connection_kwargs["password"] == "p@ss" and pool.connection_kwargs["db"] == 2
    sentinels = pool.sentinel_manager.sentinels
    assert [(s.connection_pool.connection_kwargs["host"], s.connection_pool.connection_kwargs["port"])
            for s in sentinels] == [("h1", 26379), ("h2", 26380), ("h3", 26379)]
    assert all(s.connection_pool.connection_kwargs["password"] == "sentinel-pw" for s in sentinels)
    with pytest.raises(ValueError, match="REDIS_SENTINEL_MASTER"):
        connect(URL)
