from django.urls import path
from reports import views

urlpatterns = [
    path("", views.index, name="index"),
    path("reports/", views.start_report, name="start_report"),
]
