"""Dead letters: the letter, its store in Redis and its copy on the `dead_letter` queue."""
