"""Dead letters: the letter and the one way it is made (`model`), and its store in Redis (`store`). Its
copy on the `dead_letter` queue is a Celery message the publisher builds (shared/queue/publisher.py)."""
