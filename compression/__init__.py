"""Model registry and compression jobs (the Django app), and `compression.engine`, the
Django-free compression engine it drives."""
