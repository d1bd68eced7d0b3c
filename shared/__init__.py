"""What both the producer and the worker use: the Celery app, the API clients, Redis state, config, the CLI."""
