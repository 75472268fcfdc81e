"""Dashboard views, one module per page area. Every view answers with the whole page, or for an
htmx request with just the fragment it swaps in; every action is a POST checked for its role."""

from . import alerts, audit, compression, deployments, devices, overview, tokens, users

__all__ = ["alerts", "audit", "compression", "deployments", "devices", "overview", "tokens", "users"]
