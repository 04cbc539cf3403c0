"""The ``/ui`` routes: static files, login and logout, sessions, CSRF, then the pages.

Order of checks for every request: static files need nothing; the login form needs its own
pre-session token; everything else needs a live session (pages redirect to the login form, JSON
answers 401); and every POST must be same-origin and carry the session's CSRF token (403 if not).
"""

from __future__ import annotations

import collections
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from urllib.parse import quote, urlsplit

from llmrelay.api.asgi import Request, Send
from llmrelay.core.errors import AuthenticationFailed, GatewayError
from llmrelay.core.pipeline import Gateway
from llmrelay.ui import csrf
from llmrelay.ui.pages import Context, Pages, UIError
from llmrelay.ui.responses import Response, html, json_response, read_cookies, read_form, redirect
from llmrelay.ui.responses import set_cookie as cookie
from llmrelay.ui.sessions import Session, SessionStore
from llmrelay.ui.static import StaticFiles
from llmrelay.ui.templates import Templates

log = logging.getLogger("llmrelay.ui")

SESSION_COOKIE = "llmrelay_session"
LOGIN_COOKIE = "llmrelay_login"
PREFIX = "/ui"
Page = Callable[[Context], Awaitable[Response]]


class LoginThrottle:
    """At most ``limit`` failed logins per ``window`` seconds (per process), then 429s."""

    def __init__(self, limit: int = 10, window: float = 60.0) -> None:
        self._limit = limit
        self._window = window
        self._failures: collections.deque[float] = collections.deque()

    def blocked(self, now: float) -> bool:
        while self._failures and self._failures[0] <= now - self._window:
            self._failures.popleft()
        return len(self._failures) >= self._limit

    def failed(self, now: float) -> None:
        self._failures.append(now)


class Dashboard:
    """Handles every request under ``/ui``; the app routes them here by prefix."""

    def __init__(self, gateway: Gateway, sessions: SessionStore | None = None) -> None:
        self.gateway = gateway
        self.sessions = sessions or SessionStore()
        self.templates = Templates()
        self.static = StaticFiles()
        self.throttle = LoginThrottle()
        self.pages = Pages(gateway, self.templates, self.sessions)
        pages = self.pages
        self._get: dict[str, Page] = {
            "/ui": pages.overview,
            "/ui/": pages.overview,
            "/ui/keys": pages.keys,
            "/ui/usage": pages.usage,
            "/ui/usage.csv": pages.usage_csv,
            "/ui/log": pages.log,
            "/ui/playground": pages.playground,
            "/ui/api/requests": pages.recent_requests,
        }
        self._post: dict[str, Page] = {
            "/ui/keys": pages.create_key,
            "/ui/api/playground-key": pages.playground_key,
        }
        self._key_actions: dict[str, Page] = {
            "revoke": pages.revoke_key,
            "credits": pages.add_credits,
        }

    async def __call__(self, request: Request, send: Send) -> None:
        try:
            response = await self._respond(request)
        except UIError as error:
            response = self._error(request, error.status, error.message)
        except GatewayError as error:  # the key store down, a limit: say what it is
            response = self._error(request, error.http_status, error.message)
        except Exception:
            log.exception("dashboard page %s failed", request.scope["path"])
            response = self._error(request, 500, "this page failed; the server log has details")
        await response.send(send)

    async def _respond(self, request: Request) -> Response:
        path: str = request.scope["path"]
        method = request.method
        if path.startswith("/ui/static/"):
            if method not in ("GET", "HEAD"):
                raise UIError(405, "static files are read-only")
            found = self.static.response(
                path[len("/ui/static/") :], request.header(b"if-none-match")
            )
            if found is None:
                raise UIError(404, "no such file")
            return found
        if path == "/ui/login":
            if method == "GET":
                return self._login_form(request)
            if method == "POST":
                return await self._login(request)
            raise UIError(405, "use GET or POST")
        token = read_cookies(request).get(SESSION_COOKIE)
        session = self._live_session(token)
        if session is None or token is None:
            if path.startswith("/ui/api/"):
                return json_response({"error": "not logged in"}, 401)
            target = path if method == "GET" else "/ui/"
            query = request.scope.get("query_string", b"").decode("latin-1")
            if method == "GET" and query:
                target += "?" + query
            return redirect("/ui/login?next=" + quote(target, safe=""))
        context = Context(request, session, token, {})
        if method == "POST":
            context.form = await read_form(request)
            if not csrf.same_origin(request):
                raise UIError(403, "this form was not sent from the dashboard's own origin")
            if not csrf.token_matches(session.csrf, request, context.form):
                raise UIError(403, "the form's security token is missing or wrong; reload it")
            if path == "/ui/logout":
                return await self._logout(request, token)
            page = self._post.get(path) or self._key_action(context, path)
        elif method in ("GET", "HEAD"):
            page = self._get.get(path)
        else:
            raise UIError(405, f"{method} is not used by the dashboard")
        if page is None:
            raise UIError(404, "no such page")
        return await page(context)

    def _key_action(self, context: Context, path: str) -> Page | None:
        # /ui/keys/{id}/revoke, /ui/keys/{id}/credits
        if not path.startswith("/ui/keys/"):
            return None
        key_id, _, action = path[len("/ui/keys/") :].partition("/")
        page = self._key_actions.get(action)
        if page is not None:
            context.key_id = key_id
        return page

    def _live_session(self, token: str | None) -> Session | None:
        session = self.sessions.get(token)
        if session is None:
            return None
        # The admin key that opened the session must still be a valid admin key.
        cached = self.gateway.keys.cached(session.key_id)
        record = cached.record if cached is not None else None
        if (
            record is None
            or not record.is_admin
            or record.revoked_at is not None
            or (record.expires_at is not None and record.expires_at <= time.time())
        ):
            self.sessions.end(token)
            return None
        return session

    # -- login and logout ---------------------------------------------------------------------

    def _login_form(
        self,
        request: Request,
        status: int = 200,
        message: str | None = None,
        target: str | None = None,
    ) -> Response:
        login_token = secrets.token_urlsafe(24)
        page = self.templates.render(
            "login.html",
            csrf=login_token,
            message=message,
            next=_safe_next(target if target is not None else request.query.get("next")),
        )
        return html(
            page, status, [cookie(LOGIN_COOKIE, login_token, max_age=3600, secure=_secure(request))]
        )

    async def _login(self, request: Request) -> Response:
        form = await read_form(request)
        expected = read_cookies(request).get(LOGIN_COOKIE)
        if not csrf.same_origin(request) or not expected:
            raise UIError(403, "the login form was not sent from the dashboard; reload it")
        if not csrf.token_matches(expected, request, form):
            raise UIError(403, "the login form's security token is wrong; reload it")
        now = time.monotonic()
        if self.throttle.blocked(now):
            return self._login_form(
                request, 429, "Too many failed logins; wait a minute.", form.get("next")
            )
        secret = form.get("admin_key", "").strip()
        try:
            cached = await self.gateway.keys.authenticate(secret or None)
        except AuthenticationFailed:
            cached = None
        except GatewayError as error:
            return self._login_form(request, error.http_status, error.message, form.get("next"))
        if cached is None or not cached.record.is_admin:
            self.throttle.failed(now)
            log.info("dashboard login refused")
            return self._login_form(
                request, 401, "That is not a valid admin key.", form.get("next")
            )
        token, _ = self.sessions.create(cached.record.id)
        secure = _secure(request)
        return redirect(
            _safe_next(form.get("next")),
            [
                cookie(
                    SESSION_COOKIE, token, max_age=int(self.sessions.max_seconds), secure=secure
                ),
                cookie(LOGIN_COOKIE, "", max_age=0, secure=secure),
            ],
        )

    async def _logout(self, request: Request, token: str) -> Response:
        session = self.sessions.end(token)
        if session is not None:
            await self.pages.forget_playground_key(session)
        return redirect(
            "/ui/login", [cookie(SESSION_COOKIE, "", max_age=0, secure=_secure(request))]
        )

    def _error(self, request: Request, status: int, message: str) -> Response:
        if request.scope["path"].startswith("/ui/api/"):
            return json_response({"error": message}, status)
        return html(self.templates.render("error.html", status=status, message=message), status)


def _secure(request: Request) -> bool:
    return request.scope.get("scheme") == "https"


def _safe_next(target: str | None) -> str:
    """Only a dashboard path may be a redirect target (no open redirect)."""
    if not target:
        return "/ui/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not parts.path.startswith(PREFIX) or "\\" in target:
        return "/ui/"
    return target
