"""The broker: the one Celery app, our kombu transport, the poison check, publishing, queue depth
and the events Flower shows."""
