"""The fleet app: devices, enrollment, credentials, roles, the audit log and the dashboard."""
