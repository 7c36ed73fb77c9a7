"""aibridge: an AI gateway with key pools, failover and honest errors."""

__version__ = "0.1.0"
