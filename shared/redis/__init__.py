"""Everything kept in Redis: the connection, the key layout (`Keys`, the one owner), locks,
the done marks, the breaker, the rate limiter, the state epoch."""
