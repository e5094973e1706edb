"""A one-file Django project rate limited by ratelimit.django.RateLimitMiddleware.

    pip install -e '.[django]'
    python examples/django_app/app.py runserver
    curl -i localhost:8000/items/1            # 5/minute per client IP (LIMITS)
    curl -i -X POST localhost:8000/orders     # plus 2/minute per user on the view

REDIS_URL=redis://localhost:6379/0 shares the counters between processes.
"""

from __future__ import annotations

import os
import sys

from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.urls import path

from ratelimit import Limiter
from ratelimit.keys import jwt_subject

# The decorators and the middleware share this limiter (RATELIMIT["LIMITER"] below).
limiter = Limiter(os.environ.get("REDIS_URL", "memory://"))
# The subject an Istio waypoint verified and copied into x-user-id (outputClaimToHeaders);
# use jwt_subject(jwks_url=..., issuer=...) when no waypoint verifies tokens upstream.
user = jwt_subject(trusted_header="x-user-id")


def item(request: HttpRequest, item_id: int) -> JsonResponse:
    return JsonResponse({"item": item_id})


@limiter.limit("2/minute", key=user, name="orders", methods="POST")
def orders(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"ordered": request.method == "POST"})


urlpatterns = [path("items/<int:item_id>", item), path("orders", orders)]

if not settings.configured:
    settings.configure(
        DEBUG=True,
        SECRET_KEY="example-only",
        ALLOWED_HOSTS=["*"],
        ROOT_URLCONF=__name__,
        MIDDLEWARE=["ratelimit.django.RateLimitMiddleware"],
        RATELIMIT={
            "LIMITER": f"{__name__}.limiter",
            "LIMITS": {"GET /items/*": "5/minute"},
            "KEY": "ratelimit.keys.client_ip",
        },
    )

if __name__ == "__main__":
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
