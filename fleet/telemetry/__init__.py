"""Telemetry services: ingest, rollups, retention, presence, alerts and the queries the API and
the dashboard use. Plain functions; time is always an argument (``now``) so tests control it."""
