"""Cross-site request forgery checks for every state-changing dashboard request.

Two independent checks, both required: the request comes from the dashboard's own origin
(``Origin``, or ``Referer`` when a browser sends no ``Origin``), and it carries the session's
CSRF token (a form field ``csrf`` or an ``X-CSRF-Token`` header), compared in constant time. The
session cookie is also ``SameSite=Strict``, so a cross-site request does not even carry it.
"""

from __future__ import annotations

import hmac
from urllib.parse import urlsplit

from llmrelay.api.asgi import Request

FIELD = "csrf"
HEADER = b"x-csrf-token"


def same_origin(request: Request) -> bool:
    """Whether ``Origin`` (or ``Referer``) names the host this request was sent to."""
    host = request.header(b"host")
    if not host:
        return False
    source = request.header(b"origin") or request.header(b"referer")
    if not source or source == b"null":
        return False
    parts = urlsplit(source.decode("latin-1"))
    if parts.scheme not in ("http", "https"):
        return False
    if request.scope.get("scheme") == "https" and parts.scheme != "https":
        return False
    fetch_site = request.header(b"sec-fetch-site")
    if fetch_site is not None and fetch_site not in (b"same-origin", b"none"):
        return False
    return parts.netloc.lower() == host.decode("latin-1").lower()


def token_matches(expected: str, request: Request, form: dict[str, str]) -> bool:
    sent = form.get(FIELD)
    if sent is None:
        header = request.header(HEADER)
        sent = header.decode("latin-1") if header is not None else None
    if not sent:
        return False
    return hmac.compare_digest(sent.encode("latin-1", "replace"), expected.encode("latin-1"))
