"""HITL.sh webhooks in Django with hitl-kafka-connector's public API: a one-file project.

    pip install hitl-kafka-connector django
    HITL_WEBHOOK_SECRET=<secret> python django_app.py runserver 8000

In a real project, put ``HITL_WEBHOOK_SECRETS`` in settings.py and the view in an app. The
view checks the signature on the raw ``request.body`` before parsing (both documented
headers, several secrets for rotation), reads every documented payload shape, and answers
401 (bad or missing signature), 400 (not JSON, or not a usable request event) or 200. Store
the decision before returning 200: HITL.sh retries only deliveries not answered 2xx.
"""

from __future__ import annotations

import json
import os
import sys

import django
from django.conf import settings

if not settings.configured:
    settings.configure(
        DEBUG=False,
        SECRET_KEY=os.environ.get("DJANGO_SECRET_KEY", "example-only-change-me"),
        ROOT_URLCONF=__name__,
        ALLOWED_HOSTS=os.environ.get("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1").split(","),
        MIDDLEWARE=["django.middleware.common.CommonMiddleware"],
        HITL_WEBHOOK_SECRETS=[
            s.strip() for s in os.environ.get("HITL_WEBHOOK_SECRET", "").split(",") if s.strip()
        ],
    )
    django.setup()

from django.http import HttpRequest, JsonResponse  # after settings.configure
from django.urls import path
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from connector import (
    Ignored,
    SignatureCheck,
    interpret,
    normalize_webhook,
    verify_signature,
)

# The options of the requests you create; answers are matched by value, then by label.
OPTIONS = [
    {"value": "approved", "label": "Approve"},
    {"value": "rejected", "label": "Reject"},
    {"value": "needs_changes", "label": "Needs changes"},
]


@csrf_exempt  # HITL.sh has no CSRF token; the HMAC signature authenticates the delivery
@require_POST
def hitl_webhook(request: HttpRequest) -> JsonResponse:
    body = request.body  # the raw bytes: the signature covers them exactly
    check = verify_signature(body, request.headers, settings.HITL_WEBHOOK_SECRETS)
    if check is not SignatureCheck.VALID:
        return JsonResponse({"error": "invalid or missing signature"}, status=401)
    try:
        event = normalize_webhook(json.loads(body))
    except (ValueError, RecursionError) as exc:  # not JSON, or MalformedPayload
        return JsonResponse({"error": str(exc)}, status=400)
    if isinstance(event, Ignored):
        return JsonResponse({"status": "ignored", "reason": event.reason})
    answer = None
    if event.terminal:  # completed, timeout or cancelled
        answer = interpret(
            "single_select", OPTIONS, event.status, event.response_data, event.default_response
        )
    # Your handling goes here (the seed's HITLService.process_completed_request).
    return JsonResponse(
        {
            "status": "ok",
            "request_id": event.request_id,
            "event": event.event,
            "request_status": event.status,
            "decision": answer.decision if answer else None,
            "decided_by": answer.decided_by if answer else None,
            "reviewer": event.reviewer,
        }
    )


urlpatterns = [path("webhooks/hitl", hitl_webhook)]

if __name__ == "__main__":
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
