"""Shared reliability mechanisms: retry policies, provider quotas, circuit breakers, the dead-letter queue."""
