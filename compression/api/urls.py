from django.urls import path
from rest_framework.routers import DefaultRouter

from . import views

router = DefaultRouter()
router.register("models", views.AIModelViewSet, basename="aimodel")
router.register("versions", views.ModelVersionViewSet, basename="modelversion")
router.register("datasets", views.DatasetViewSet, basename="dataset")
router.register("jobs", views.CompressionJobViewSet, basename="compressionjob")
router.register("variants", views.VariantViewSet, basename="variant")

urlpatterns = [
    path("agent/signing-key", views.SigningKeyView.as_view(), name="agent-signing-key"),
    path("recipes/", views.RecipesView.as_view(), name="recipes"),
    *router.urls,
]
