"""A page with a button: the view submits the task, the browser follows it from the bridge."""

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.http import require_POST

from .tasks import build_report


def index(request: HttpRequest) -> HttpResponse:
    return render(request, "reports/index.html", {"taskcast_url": settings.TASKCAST_PUBLIC_URL})


@require_POST
def start_report(request: HttpRequest) -> JsonResponse:
    rows = min(max(int(request.POST.get("rows", 20)), 1), 1000)
    result = build_report.delay(rows=rows)
    return JsonResponse({"operation_id": result.id})
