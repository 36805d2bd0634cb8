"""Real-time streams: leases and fencing (one consumer per shard), the consumer, its Celery tasks."""
