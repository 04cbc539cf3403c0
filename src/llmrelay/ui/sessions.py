"""Dashboard sessions: random ids in memory, idle and absolute expiry, one CSRF token each.

The cookie holds a 256-bit random token; the store keeps only its SHA-256, so not even a memory
dump of the process hands out live sessions. Sessions live in the process that created them:
with ``--workers N`` a browser may land on a worker that does not know its session (see
docs/dashboard.md).
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class NewKeyNotice:
    """A key created in this session, whose secret the next keys page shows once."""

    id: str
    name: str
    secret: str


@dataclass(slots=True)
class Session:
    key_id: str
    """The admin key that logged in; the session ends when that key is revoked or expires."""
    csrf: str
    created: float
    last_seen: float
    expires: float
    new_key: NewKeyNotice | None = None
    playground_key: tuple[str, str] | None = None
    """(id, secret) of the playground key the browser uses to call /v1/chat/completions."""


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("latin-1", "replace")).hexdigest()


class SessionStore:
    def __init__(
        self,
        idle_seconds: float = 3600.0,
        max_seconds: float = 12 * 3600.0,
        limit: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.idle_seconds = idle_seconds
        self.max_seconds = max_seconds
        self._limit = limit
        self._clock = clock
        self._sessions: dict[str, Session] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def create(self, key_id: str) -> tuple[str, Session]:
        """A new session and the token for its cookie."""
        now = self._clock()
        self._purge(now)
        if len(self._sessions) >= self._limit:
            oldest = min(self._sessions, key=lambda k: self._sessions[k].last_seen)
            del self._sessions[oldest]
        token = secrets.token_urlsafe(32)
        session = Session(
            key_id=key_id,
            csrf=secrets.token_urlsafe(32),
            created=now,
            last_seen=now,
            expires=now + self.max_seconds,
        )
        self._sessions[_digest(token)] = session
        return token, session

    def get(self, token: str | None) -> Session | None:
        """The live session for ``token`` (its idle timer restarted), or None."""
        if not token:
            return None
        digest = _digest(token)
        session = self._sessions.get(digest)
        if session is None:
            return None
        now = self._clock()
        if now >= session.expires or now - session.last_seen >= self.idle_seconds:
            del self._sessions[digest]
            return None
        session.last_seen = now
        return session

    def end(self, token: str | None) -> Session | None:
        if not token:
            return None
        return self._sessions.pop(_digest(token), None)

    def _purge(self, now: float) -> None:
        expired = [
            digest
            for digest, s in self._sessions.items()
            if now >= s.expires or now - s.last_seen >= self.idle_seconds
        ]
        for digest in expired:
            del self._sessions[digest]
