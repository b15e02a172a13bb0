"""Response headers that tell the browser what a page may do.

Django's SecurityMiddleware covers HSTS, nosniff and the referrer policy, and XFrameOptionsMiddleware
covers X-Frame-Options; this adds the two it does not: a Content-Security-Policy and a
Permissions-Policy.

Model output is untrusted text shown on the labelling page. Templates escape it and markdown is
sanitised, but the CSP is the second wall: with `script-src 'self'` and no 'unsafe-inline', even a
string that slipped through as markup could not run a script, because no inline script runs at all.
Every script of the site is a static file for that reason (the API docs' Swagger UI included).
Inline *styles* stay allowed: Swagger UI sets style attributes, and a style cannot run code.
"""

from __future__ import annotations

from django.conf import settings

DEFAULT_CSP = {
    "default-src": "'self'",
    "script-src": "'self'",
    "style-src": "'self' 'unsafe-inline'",
    # Swagger UI draws its icons as data: URIs.
    "img-src": "'self' data:",
    "font-src": "'self'",
    "connect-src": "'self'",
    "object-src": "'none'",
    "base-uri": "'self'",
    "frame-ancestors": "'none'",
    "form-action": "'self'",
}

# Nothing on the site needs any of these; saying so stops an injected frame or script from asking.
PERMISSIONS_POLICY = ", ".join(
    f"{feature}=()"
    for feature in (
        "accelerometer",
        "camera",
        "geolocation",
        "gyroscope",
        "magnetometer",
        "microphone",
        "payment",
        "usb",
        "interest-cohort",
    )
)


def content_security_policy() -> str:
    directives = {**DEFAULT_CSP, **getattr(settings, "CONTENT_SECURITY_POLICY", {})}
    return "; ".join(f"{name} {value}" for name, value in directives.items())


class SecurityHeadersMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response
        self.csp = content_security_policy()

    def __call__(self, request):
        response = self.get_response(request)
        # setdefault: a view that needs a different policy (none does today) may set its own.
        response.headers.setdefault("Content-Security-Policy", self.csp)
        response.headers.setdefault("Permissions-Policy", PERMISSIONS_POLICY)
        response.headers.setdefault("Cross-Origin-Opener-Policy", "same-origin")
        return response
