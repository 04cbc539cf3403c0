"""The dashboard at /ui, driven with httpx: login, sessions, CSRF, escaping, keys, usage."""

from __future__ import annotations

import csv
import io
import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from llmrelay.testing.harness import RunningGateway
from llmrelay.ui.charts import Series, axis_top, bar_chart, line_chart, nice_ceiling
from llmrelay.ui.dashboard import LoginThrottle
from llmrelay.ui.sessions import SessionStore

XSS_NAME = "<script>alert(1)</script>"
XSS_PROMPT = "<img src=x onerror=alert(2)>"
PAGES = ["/ui/", "/ui/?range=1h", "/ui/?range=7d", "/ui/?range=30d", "/ui/keys", "/ui/usage",
         "/ui/log", "/ui/playground"]  # fmt: skip


def csrf_of(page: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', page)
    assert match, page[:500]
    return match.group(1)


class Browser:
    """An httpx client that behaves like the dashboard's own pages (same Origin, cookies)."""

    def __init__(self, gateway: RunningGateway) -> None:
        self.gateway = gateway
        self.client = httpx.Client(
            base_url=gateway.base_url, headers={"Origin": gateway.base_url}, timeout=30
        )
        self.csrf = ""

    def login(self, secret: str | None = None) -> httpx.Response:
        form = self.client.get("/ui/login")
        return self.client.post(
            "/ui/login",
            data={"csrf": csrf_of(form.text), "admin_key": secret or self.gateway.admin_key},
        )

    def logged_in(self) -> Browser:
        assert self.login().status_code == 303
        self.csrf = csrf_of(self.client.get("/ui/keys").text)
        return self

    def post(self, path: str, **data: Any) -> httpx.Response:
        return self.client.post(path, data={"csrf": self.csrf, **data})

    def create_key(self, **data: Any) -> str:
        """Create a key through the form; the secret from the page that shows it once."""
        assert self.post("/ui/keys", **data).status_code == 303
        page = self.client.get("/ui/keys").text
        match = re.search(r'<code id="new-key-secret">([^<]+)</code>', page)
        assert match, page
        return match.group(1)


@pytest.fixture
def browser(gateway: RunningGateway) -> Iterator[Browser]:
    b = Browser(gateway)
    yield b
    b.client.close()


def chat(gateway: RunningGateway, key: str, **body: Any) -> httpx.Response:
    response = httpx.post(
        gateway.base_url + "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "hello"}], **body},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    gateway.ledger_row(response.headers["x-request-id"])
    return response


# -- login and sessions ------------------------------------------------------------------------


def test_pages_need_a_session(browser: Browser) -> None:
    response = browser.client.get("/ui/keys?all=1")
    assert response.status_code == 303
    assert response.headers["location"] == "/ui/login?next=%2Fui%2Fkeys%3Fall%3D1"
    assert browser.client.get("/ui/api/requests").status_code == 401
    assert browser.client.get("/ui").status_code == 303


def test_wrong_admin_key_is_refused(browser: Browser, gateway: RunningGateway) -> None:
    response = browser.login("lr-not-a-real-key")
    assert response.status_code == 401
    assert "not a valid admin key" in response.text
    assert (
        "set-cookie" not in response.headers
        or "llmrelay_session=" not in (response.headers["set-cookie"])
    )
    user_key = gateway.create_key(name="user")
    assert browser.login(user_key).status_code == 401  # a user key is not an admin key
    assert browser.client.get("/ui/keys").status_code == 303


def test_login_opens_a_strict_http_only_session(browser: Browser) -> None:
    response = browser.login()
    assert response.status_code == 303
    assert response.headers["location"] == "/ui/"
    cookies = response.headers.get_list("set-cookie")
    session = next(c for c in cookies if c.startswith("llmrelay_session="))
    attributes = {part.strip() for part in session.split(";")}
    assert {"HttpOnly", "SameSite=Strict", "Path=/ui"} <= attributes
    assert "Secure" not in attributes  # plain http here; https adds it
    for page in PAGES:
        response = browser.client.get(page)
        assert response.status_code == 200, page
        assert response.headers["cache-control"] == "no-store"
        assert "script-src 'self'" in response.headers["content-security-policy"]
        assert response.headers["x-frame-options"] == "DENY"
        assert "<script>" not in response.text  # no inline script anywhere


def test_login_needs_its_form_token_and_origin(browser: Browser, gateway: RunningGateway) -> None:
    form = browser.client.get("/ui/login")
    token = csrf_of(form.text)
    no_token = browser.client.post("/ui/login", data={"admin_key": gateway.admin_key})
    assert no_token.status_code == 403
    wrong_origin = browser.client.post(
        "/ui/login",
        data={"csrf": token, "admin_key": gateway.admin_key},
        headers={"Origin": "http://evil.example"},
    )
    assert wrong_origin.status_code == 403
    fresh = httpx.post(  # no login cookie at all
        gateway.base_url + "/ui/login",
        data={"csrf": token, "admin_key": gateway.admin_key},
        headers={"Origin": gateway.base_url},
    )
    assert fresh.status_code == 403


def test_open_redirects_are_refused(browser: Browser, gateway: RunningGateway) -> None:
    form = browser.client.get("/ui/login?next=//evil.example/x")
    assert 'value="/ui/"' in form.text
    response = browser.client.post(
        "/ui/login",
        data={"csrf": csrf_of(form.text), "admin_key": gateway.admin_key, "next": "https://e.x"},
    )
    assert response.headers["location"] == "/ui/"


def test_expired_session_redirects_to_login(browser: Browser, gateway: RunningGateway) -> None:
    browser.logged_in()
    sessions = gateway.app.dashboard.sessions
    for session in sessions._sessions.values():
        session.last_seen -= sessions.idle_seconds + 1
    response = browser.client.get("/ui/usage")
    assert response.status_code == 303
    assert response.headers["location"].startswith("/ui/login")
    assert browser.client.get("/ui/api/requests").status_code == 401
    posted = browser.post("/ui/keys", name="late")
    assert posted.status_code == 303  # back to the login form, nothing created
    assert "late" not in [k.name for k in gateway.call(gateway.app.store.list_keys())]


def test_session_store_idle_and_absolute_expiry() -> None:
    now = [1000.0]
    store = SessionStore(idle_seconds=60, max_seconds=300, clock=lambda: now[0])
    token, session = store.create("key_1")
    assert store.get(token) is session
    assert store.get("forged") is None
    now[0] += 59
    assert store.get(token) is session  # activity restarts the idle timer
    now[0] += 59
    assert store.get(token) is session
    now[0] += 61
    assert store.get(token) is None
    token, _ = store.create("key_1")
    for _ in range(6):
        now[0] += 50
        store.get(token)
    assert store.get(token) is None  # the absolute limit holds however active
    assert len(store) == 0


def test_revoking_the_admin_key_ends_its_sessions(
    browser: Browser, gateway: RunningGateway
) -> None:
    async def second_admin() -> tuple[str, str]:
        new = await gateway.app.keys.create(name="admin2", is_admin=True)
        return new.record.id, new.secret

    key_id, secret = gateway.call(second_admin())
    assert browser.login(secret).status_code == 303
    assert browser.client.get("/ui/keys").status_code == 200
    gateway.call(gateway.app.keys.revoke(key_id))
    assert browser.client.get("/ui/keys").status_code == 303


def test_logout_ends_the_session(browser: Browser) -> None:
    browser.logged_in()
    response = browser.post("/ui/logout")
    assert response.status_code == 303
    assert response.headers["location"] == "/ui/login"
    assert browser.client.get("/ui/keys").status_code == 303


def test_failed_logins_are_throttled(browser: Browser, gateway: RunningGateway) -> None:
    gateway.app.dashboard.throttle = LoginThrottle(limit=2, window=60)
    assert browser.login("lr-wrong-1").status_code == 401
    assert browser.login("lr-wrong-2").status_code == 401
    assert browser.login().status_code == 429  # even the right key waits


# -- CSRF --------------------------------------------------------------------------------------


def test_forged_posts_are_refused(browser: Browser, gateway: RunningGateway) -> None:
    browser.logged_in()
    client = browser.client
    attempts = [
        client.post("/ui/keys", data={"name": "forged-1"}),
        client.post("/ui/keys", data={"name": "forged-2", "csrf": "wrong"}),
        client.post("/ui/keys", data={"name": "forged-3", "csrf": browser.csrf + "x"}),
        client.post(
            "/ui/keys",
            data={"name": "forged-4", "csrf": browser.csrf},
            headers={"Origin": "http://evil.example"},
        ),
        client.post(
            "/ui/keys",
            data={"name": "forged-5", "csrf": browser.csrf},
            headers={"Origin": "", "Referer": ""},
        ),
        client.post(
            "/ui/keys",
            data={"name": "forged-6", "csrf": browser.csrf},
            headers={"Sec-Fetch-Site": "cross-site"},
        ),
        client.post("/ui/api/playground-key"),
        client.post("/ui/logout", data={"csrf": "nope"}),
    ]
    assert [r.status_code for r in attempts] == [403] * len(attempts)
    assert "security token" in attempts[0].text
    assert attempts[6].json() == {"error": attempts[6].json()["error"]}
    names = [k.name for k in gateway.call(gateway.app.store.list_keys())]
    assert not [n for n in names if n.startswith("forged")]
    # The same request with the token and from the dashboard's origin goes through.
    referer_only = client.post(
        "/ui/keys",
        data={"name": "real", "csrf": browser.csrf},
        headers={"Origin": "", "Referer": gateway.base_url + "/ui/keys"},
    )
    assert referer_only.status_code == 303
    assert browser.client.get("/ui/keys").status_code == 200  # still logged in


# -- keys ------------------------------------------------------------------------------------


def test_a_new_key_is_shown_once_and_then_only_its_prefix(
    browser: Browser, gateway: RunningGateway
) -> None:
    browser.logged_in()
    secret = browser.create_key(name="app-1", credits="5", rpm="10", models="mock/*")
    assert secret.startswith("lr-")
    key = httpx.get(
        gateway.base_url + "/v1/key", headers={"Authorization": f"Bearer {secret}"}
    ).json()
    assert (key["name"], key["credits"], key["rpm"], key["models"]) == ("app-1", 5, 10, ["mock/*"])
    chat(gateway, secret, model="mock/echo")
    again = browser.client.get("/ui/keys").text
    assert secret not in again
    assert f"<code>{secret[:7]}…</code>" in again
    for page in [*PAGES, "/ui/usage.csv", "/ui/api/requests"]:
        assert secret not in browser.client.get(page).text, page


def test_bad_key_forms_explain_the_problem(browser: Browser, gateway: RunningGateway) -> None:
    browser.logged_in()
    for data, problem in [
        ({"name": ""}, "name"),
        ({"name": "x", "credits": "lots"}, "credits must be a number"),
        ({"name": "x", "rpm": "-1"}, "rpm"),
        ({"name": "x", "rpm": "1.5"}, "rpm must be a number"),
    ]:
        response = browser.post("/ui/keys", **data)
        assert response.status_code == 400, data
        assert problem in response.text
    assert [k.name for k in gateway.call(gateway.app.store.list_keys())] == ["admin"]


def test_top_up_and_revoke(browser: Browser, gateway: RunningGateway) -> None:
    browser.logged_in()
    browser.create_key(name="limited", credits="1")
    [record] = [k for k in gateway.call(gateway.app.store.list_keys()) if k.name == "limited"]
    assert browser.post(f"/ui/keys/{record.id}/credits", amount="2.5").status_code == 303
    assert browser.post(f"/ui/keys/{record.id}/credits", amount="-1").status_code == 400
    stored = gateway.call(gateway.app.store.get_key(record.id))
    assert stored is not None
    assert stored.credits_nanos == 3_500_000_000
    assert browser.post(f"/ui/keys/{record.id}/revoke").status_code == 303
    stored = gateway.call(gateway.app.store.get_key(record.id))
    assert stored is not None
    assert stored.revoked_at is not None
    assert browser.post("/ui/keys/key_nope/revoke").status_code == 404
    admin = gateway.call(gateway.app.store.list_keys())[0]
    refused = browser.post(f"/ui/keys/{admin.id}/revoke")
    assert refused.status_code == 400
    assert "logged in with" in refused.text


# -- escaping ----------------------------------------------------------------------------------


def test_html_in_names_models_and_prompts_is_always_escaped(
    browser: Browser, gateway: RunningGateway
) -> None:
    browser.logged_in()
    secret = browser.create_key(name=XSS_NAME)
    chat(gateway, secret, model="mock/echo", messages=[{"role": "user", "content": XSS_PROMPT}])
    missing = chat(gateway, secret, model=XSS_NAME)
    assert missing.status_code == 404
    [record] = [k for k in gateway.call(gateway.app.store.list_keys()) if k.name == XSS_NAME]
    pages = [
        *PAGES,
        f"/ui/usage?key_id={record.id}",
        "/ui/usage?model=%3Cscript%3Ealert(1)%3C/script%3E",
        "/ui/usage?day=%3Cscript%3E",
        "/ui/keys?all=1",
        "/ui/api/requests",
        "/ui/nope%3Cscript%3Ealert(1)%3C/script%3E",
    ]
    for page in pages:
        text = browser.client.get(page).text
        assert XSS_NAME not in text, page
        assert "<img src=x" not in text, page
    keys_page = browser.client.get("/ui/keys").text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in keys_page
    usage_page = browser.client.get("/ui/usage").text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in usage_page  # the key and the model
    log = browser.client.get("/ui/api/requests").json()["data"]
    assert {row["key"] for row in log} == {XSS_NAME}  # JSON escaping keeps the value intact


# -- usage, CSV, live log, playground ------------------------------------------------------------


def test_usage_filters_and_csv_export(browser: Browser, gateway: RunningGateway) -> None:
    browser.logged_in()
    first = gateway.create_key(name="first")
    second = gateway.create_key(name="=HYPERLINK(evil)")
    chat(gateway, first, model="mock/echo")
    chat(gateway, first, model="mock/lorem")
    chat(gateway, second, model="mock/echo")
    keys = {k.name: k.id for k in gateway.call(gateway.app.store.list_keys())}
    page = browser.client.get("/ui/usage", params={"key_id": keys["first"]}).text
    assert re.search(r'id="usage-requests">2<', page)
    page = browser.client.get("/ui/usage", params={"model": "mock/echo"}).text
    assert re.search(r'id="usage-requests">2<', page)
    today = time.strftime("%Y-%m-%d", time.gmtime())
    page = browser.client.get("/ui/usage", params={"day": today}).text
    assert re.search(r'id="usage-requests">3<', page)
    page = browser.client.get("/ui/usage", params={"day": "2001-01-01"}).text
    assert re.search(r'id="usage-requests">0<', page)
    assert browser.client.get("/ui/usage", params={"day": "yesterday"}).status_code == 400
    exported = browser.client.get("/ui/usage.csv", params={"model": "mock/echo"})
    assert exported.headers["content-type"].startswith("text/csv")
    assert "attachment" in exported.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert len(rows) == 2
    assert {r["model"] for r in rows} == {"mock/echo"}
    assert {r["key_name"] for r in rows} == {"first", "'=HYPERLINK(evil)"}
    assert all(float(r["cost_usd"]) > 0 for r in rows)


def test_live_log_feed(browser: Browser, gateway: RunningGateway) -> None:
    browser.logged_in()
    key = gateway.create_key(name="live")
    chat(gateway, key, model="mock/echo")
    data = browser.client.get("/ui/api/requests").json()["data"]
    assert [(r["key"], r["model"], r["status"]) for r in data] == [("live", "mock/echo", "ok")]
    newest = data[0]["created"]
    assert browser.client.get(f"/ui/api/requests?after={newest}").json()["data"] == []
    chat(gateway, key, model="mock/lorem")
    later = browser.client.get(f"/ui/api/requests?after={newest}").json()["data"]
    assert [r["model"] for r in later] == ["mock/lorem"]
    assert browser.client.get("/ui/api/requests?after=soon").status_code == 400


def test_overview_counts_what_happened(browser: Browser, gateway: RunningGateway) -> None:
    browser.logged_in()
    key = gateway.create_key(name="overview")
    chat(gateway, key, model="mock/echo")
    chat(gateway, key, model="emu/gpt+status=400")
    page = browser.client.get("/ui/?range=1h").text
    assert re.search(r'id="tile-requests">2<', page)
    assert re.search(r'id="tile-errors">50.0%<', page)
    assert page.count('<rect class="bar ') == 2  # one ok bar, one error bar, same bucket
    assert "mock/echo" in page


def test_playground_key_streams_through_the_gateway(
    browser: Browser, gateway: RunningGateway
) -> None:
    browser.logged_in()
    headers = {"X-CSRF-Token": browser.csrf}
    first = browser.client.post("/ui/api/playground-key", headers=headers)
    assert first.status_code == 200
    secret = first.json()["key"]
    assert browser.client.post("/ui/api/playground-key", headers=headers).json()["key"] == secret
    with httpx.stream(
        "POST",
        gateway.base_url + "/v1/chat/completions",
        json={"model": "auto", "messages": [{"role": "user", "content": "hi"}], "stream": True},
        headers={"Authorization": f"Bearer {secret}"},
        timeout=30,
    ) as response:
        assert response.status_code == 200
        assert response.headers["x-route-basket"]
        body = response.read()
    assert body.endswith(b"data: [DONE]\n\n")
    keys_page = browser.client.get("/ui/keys").text
    assert "playground" in keys_page
    assert secret not in keys_page
    assert browser.post("/ui/logout").status_code == 303
    after = httpx.get(gateway.base_url + "/v1/key", headers={"Authorization": f"Bearer {secret}"})
    assert after.status_code == 401  # the playground key died with the session


def test_static_files_and_unknown_paths(browser: Browser) -> None:
    css = browser.client.get("/ui/static/app.css")
    assert css.status_code == 200
    assert css.headers["content-type"].startswith("text/css")
    again = browser.client.get("/ui/static/app.css", headers={"If-None-Match": css.headers["etag"]})
    assert again.status_code == 304
    assert browser.client.get("/ui/static/playground.js").status_code == 200
    for path in ["/ui/static/nope.js", "/ui/static/..%2Fpages.py", "/ui/static/", "/ui/static/x/y"]:
        assert browser.client.get(path).status_code == 404, path
    browser.logged_in()
    assert browser.client.get("/ui/nope").status_code == 404
    assert browser.client.delete("/ui/keys").status_code == 405


# -- charts ------------------------------------------------------------------------------------


def test_nice_ceiling_and_axis_top() -> None:
    assert [nice_ceiling(v) for v in (0, 0.7, 1, 3, 7, 12, 2400)] == [1, 1, 1, 5, 10, 20, 2500]
    assert [axis_top(v, whole=True) for v in (0, 1, 4, 5, 9, 30)] == [4, 4, 4, 8, 20, 40]
    assert axis_top(0.00003, least_top=0.0001) == pytest.approx(0.0001)
    assert axis_top(950) == 1000


def test_charts_escape_every_text() -> None:
    labels = ["<b>09:00</b>", "10:00"]
    for chart in (
        bar_chart(XSS_NAME, labels, [Series(XSS_NAME, [1, 2], "s1")], str),
        line_chart(XSS_NAME, labels, [Series("x", [1, 2], '"><script>')], str),
    ):
        assert "<script>" not in chart
        assert "<b>" not in chart
        assert chart.count("<svg") == 1
