"""Loopback simulator of our providers: their paths, parameters, payload shapes and error bodies."""
