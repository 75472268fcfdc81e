from django.urls import path

from . import views

urlpatterns = [
    path("", views.overview, name="overview"),
    path("devices/", views.device_list, name="devices"),
]
