"""The web dashboard at ``/ui``: overview charts, keys, usage, a live request log, a playground.

Server-rendered pages (Jinja2, autoescaped) with a little same-origin JavaScript, behind the admin
key: a login form opens a server-side session (an HttpOnly, SameSite=Strict cookie), and every
state-changing request carries the session's CSRF token and a same-origin ``Origin``.
"""

from llmrelay.ui.dashboard import Dashboard

__all__ = ["Dashboard"]
