"""What a dashboard handler answers, and the headers every dashboard answer carries."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qsl

import orjson

from llmrelay.api.asgi import Headers, Request, Send

# No inline script or style anywhere: the pages' JavaScript and CSS are same-origin files, so an
# injected tag could not run even if escaping ever failed.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS: Headers = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
]
NO_STORE: Headers = [(b"cache-control", b"no-store")]
HTML = "text/html; charset=utf-8"
FORM_LIMIT = 64 * 1024


@dataclass(slots=True)
class Response:
    status: int
    body: bytes
    content_type: str = HTML
    headers: Headers = field(default_factory=list)
    cacheable: bool = False

    async def send(self, send: Send) -> None:
        headers: Headers = [
            (b"content-type", self.content_type.encode()),
            (b"content-length", str(len(self.body)).encode()),
            *SECURITY_HEADERS,
            *([] if self.cacheable else NO_STORE),
            *self.headers,
        ]
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": self.body})


def html(text: str, status: int = 200, headers: Headers | None = None) -> Response:
    return Response(status, text.encode("utf-8"), HTML, list(headers or []))


def redirect(location: str, headers: Headers | None = None) -> Response:
    return Response(303, b"", HTML, [(b"location", location.encode()), *(headers or [])])


def json_response(payload: object, status: int = 200) -> Response:
    # Escaped so that no JSON answer can ever be read as markup, whatever a name contains.
    body = orjson.dumps(payload).replace(b"<", b"\\u003c").replace(b">", b"\\u003e")
    return Response(status, body, "application/json")


def read_cookies(request: Request) -> dict[str, str]:
    raw = request.header(b"cookie")
    cookies: dict[str, str] = {}
    if not raw:
        return cookies
    for part in raw.decode("latin-1").split(";"):
        name, sep, value = part.strip().partition("=")
        if sep and name and name not in cookies:
            cookies[name] = value.strip().strip('"')
    return cookies


def set_cookie(
    name: str, value: str, *, max_age: int, secure: bool, path: str = "/ui"
) -> tuple[bytes, bytes]:
    attributes = [
        f"{name}={value}",
        f"Path={path}",
        f"Max-Age={max_age}",
        "HttpOnly",
        "SameSite=Strict",
    ]
    if secure:
        attributes.append("Secure")
    return b"set-cookie", "; ".join(attributes).encode("latin-1")


async def read_form(request: Request) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body (anything else reads as empty)."""
    content_type = (request.header(b"content-type") or b"").split(b";", 1)[0].strip().lower()
    body = await request.body(FORM_LIMIT)
    if content_type != b"application/x-www-form-urlencoded":
        return {}
    return dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
