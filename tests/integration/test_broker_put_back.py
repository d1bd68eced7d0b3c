"""A message kombu popped but could not record as unacked (Redis went away between the two commands)
goes back on its queue instead of vanishing (shared/queue/broker.py)."""
from __future__ import annotations

import kombu
import pytest
import redis
from kombu.transport import redis as kombu_redis

from shared.queue.broker import TRANSPORT

pytestmark = pytest.mark.integration


def test_a_message_popped_as_redis_goes_away_is_put_back(redis_url, monkeypatch):
    client = redis.Redis.from_url(redis_url)
    with kombu.Connection(redis_url, transport=TRANSPORT, transport_options={"global_keyprefix": "t:"}) as conn:
        queue = kombu.Queue("putback", kombu.Exchange("putback"), routing_key="putback")
        with conn.Producer() as producer:
            producer.publish({"n": 1}, exchange="", routing_key="putback", declare=[queue], serializer="json")
        assert client.llen("t:putback") == 1

        real_append = kombu_redis.QoS.append
        failed = []

        def connection_lost_once(self, message, tag):
            # kombu's second command (recording the unacked message) meets a Redis that just went away
            if not failed:
                failed.append(tag)
                raise redis.ConnectionError("Connection closed by server.")
            return real_append(self, message, tag)

        monkeypatch.setattr(kombu_redis.QoS, "append", connection_lost_once)
        received = []

        def take(body, msg):
            received.append(body)
            msg.ack()

        with conn.Consumer(queue, callbacks=[take]):
            with pytest.raises(redis.ConnectionError):
                conn.drain_events(timeout=5)
            assert failed and received == []
            assert client.llen("t:putback") == 1, "the popped message is back on its queue"
        with conn.clone() as again, again.Consumer(queue, callbacks=[take]):
            again.drain_events(timeout=5)
        assert received == [{"n": 1}]
        assert client.llen("t:putback") == 0 and client.hlen("t:unacked") == 0
    client.close()


def test_a_channel_closed_after_its_connection_went_leaves_its_messages_to_the_sweep(redis_url):
    """Closing a channel restores its unacked messages; once the transport has lost its connection
    (a failover under load), kombu cannot make a client for that and raised AttributeError, which stopped
    the worker. The message stays in the unacked hash, where the redelivery sweep finds it."""
    client = redis.Redis.from_url(redis_url)
    conn = kombu.Connection(redis_url, transport=TRANSPORT, transport_options={"global_keyprefix": "t:"})
    queue = kombu.Queue("sweep", kombu.Exchange("sweep"), routing_key="sweep")
    with conn.Producer() as producer:
        producer.publish({"n": 1}, exchange="", routing_key="sweep", declare=[queue], serializer="json")
    channel = conn.default_channel
    taken = queue(channel).get(no_ack=False)
    assert taken is not None and client.hlen("t:unacked") == 1
    conn._do_close_transport()  # the transport detached from its connection, as kombu's close does
    channel.close()  # raised AttributeError ('NoneType' object has no attribute 'hostname') before
    assert client.hlen("t:unacked") == 1 and client.llen("t:sweep") == 0, "left for the sweep, not lost"
    client.close()
