"""What the pipeline's health is: one snapshot read from Redis, the gauges and exporter that
show it, the clocks compared."""
