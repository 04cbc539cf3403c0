"""The dashboard's CSS and JavaScript, read from the package once and served from memory."""

from __future__ import annotations

import hashlib
from importlib import resources

from llmrelay.ui.responses import Response

_TYPES = {
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}


class StaticFiles:
    """Only files shipped in ``llmrelay/ui/static`` exist; any other name is a 404."""

    def __init__(self) -> None:
        self._files: dict[str, tuple[bytes, str, bytes]] = {}
        for entry in resources.files("llmrelay.ui").joinpath("static").iterdir():
            suffix = "." + entry.name.rsplit(".", 1)[-1]
            if entry.is_file() and suffix in _TYPES:
                body = entry.read_bytes()
                etag = b'"' + hashlib.sha256(body).hexdigest()[:16].encode() + b'"'
                self._files[entry.name] = (body, _TYPES[suffix], etag)

    def __contains__(self, name: str) -> bool:
        return name in self._files

    def response(self, name: str, if_none_match: bytes | None) -> Response | None:
        found = self._files.get(name)
        if found is None:
            return None
        body, content_type, etag = found
        headers = [(b"etag", etag), (b"cache-control", b"no-cache")]
        if if_none_match == etag:
            return Response(304, b"", content_type, headers, cacheable=True)
        return Response(200, body, content_type, headers, cacheable=True)
