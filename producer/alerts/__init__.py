"""Beat's alert watcher and the chat robots it posts to."""
