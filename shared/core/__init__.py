"""The ground's ground: settings, errors and retry, time, logs, HTTP and the metrics' instruments.
Imports nothing of ours outside this room."""
