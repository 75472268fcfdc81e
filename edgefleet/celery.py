"""The Celery application. Configuration lives in settings.py under the CELERY_ namespace."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "edgefleet.settings")

app = Celery("edgefleet")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
