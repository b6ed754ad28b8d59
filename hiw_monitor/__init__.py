"""hiw-monitor: a PostgreSQL observability agent for the Heroes in Waiting database."""

__version__ = "0.1.0"
