"""Latency lookup tables: profiling backends, table I/O, validation, remote bundles."""
from .table import LatencyTable

__all__ = ["LatencyTable"]
