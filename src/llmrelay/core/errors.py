"""The one error tree of the gateway.

Every failure a client can see is a :class:`GatewayError`. Each knows its HTTP status, its
``type`` on the OpenAI surface, its Anthropic error type, its Gemini status and its log level, so
the surfaces render it without a single ``if``::

    GatewayError
    ├── InvalidRequest              400 invalid_request_error
    │   └── UnsupportedParameter    400 invalid_request_error  (the provider cannot honour a field)
    ├── AuthenticationFailed        401 authentication_error
    ├── InsufficientCredits         402 insufficient_credits
    ├── PermissionDenied            403 permission_denied
    ├── NotFound                    404 not_found
    │   └── ModelNotFound           404 model_not_found
    ├── RequestTimeout              408 request_timeout       (the client sent its body too slowly)
    ├── PayloadTooLarge             413 request_too_large
    ├── RateLimited                 429 rate_limit_exceeded   (the key's own limits)
    ├── ServiceUnavailable          503 service_unavailable   (the gateway itself, e.g. store down)
    └── UpstreamError               502 upstream_error        (anything a provider did)
        ├── UpstreamStatusError     a provider 4xx/5xx, meaning kept (400→400, 429→429, 5xx→502)
        ├── UpstreamRateLimited     429 upstream_rate_limit   (with the upstream's Retry-After)
        ├── UpstreamUnavailable     503 provider_unavailable  (connect refused, 503, overloaded)
        ├── UpstreamTimeout         504 upstream_timeout      (connect / first byte / idle)
        ├── UpstreamProtocolError   502 upstream_error        (HTML, malformed JSON, cut body)
        └── FallbacksExhausted      status of the last attempt, carries every attempt's cause

Provider modules translate their library and wire errors into this tree at exactly one place each.
"""

from __future__ import annotations

import logging
from typing import ClassVar

_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
}

_GEMINI_STATUSES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    402: "FAILED_PRECONDITION",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    408: "DEADLINE_EXCEEDED",
    413: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


class GatewayError(Exception):
    """A failure with a defined status and body on every surface."""

    status: ClassVar[int] = 500
    type: ClassVar[str] = "internal_error"
    log_level: ClassVar[int] = logging.ERROR

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        retry_after: float | None = None,
        status: int | None = None,
        error_type: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.retry_after = retry_after
        # Instances may refine the class defaults (an upstream's own status or type).
        self.http_status = status if status is not None else self.status
        self.error_type = error_type if error_type is not None else self.type

    @property
    def anthropic_type(self) -> str:
        return _ANTHROPIC_TYPES.get(self.http_status, "api_error")

    @property
    def gemini_status(self) -> str:
        return _GEMINI_STATUSES.get(self.http_status, "UNKNOWN")

    def to_openai(self) -> dict[str, object]:
        """The contract's error body: ``{"error": {code, type, message, param}}``."""
        return {
            "error": {
                "code": self.http_status,
                "type": self.error_type,
                "message": self.message,
                "param": self.param,
            }
        }

    def retry_after_header(self) -> str | None:
        if self.retry_after is None:
            return None
        return str(max(0, int(-(-self.retry_after // 1))))  # ceil, never negative


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request_error"
    log_level = logging.INFO


class UnsupportedParameter(InvalidRequest):
    """The target provider has no way to honour a field the client sent."""


class AuthenticationFailed(GatewayError):
    status = 401
    type = "authentication_error"
    log_level = logging.INFO


class InsufficientCredits(GatewayError):
    status = 402
    type = "insufficient_credits"
    log_level = logging.INFO


class PermissionDenied(GatewayError):
    status = 403
    type = "permission_denied"
    log_level = logging.INFO


class NotFound(GatewayError):
    status = 404
    type = "not_found"
    log_level = logging.INFO


class ModelNotFound(NotFound):
    type = "model_not_found"


class RequestTimeout(GatewayError):
    status = 408
    type = "request_timeout"
    log_level = logging.INFO


class PayloadTooLarge(GatewayError):
    status = 413
    type = "request_too_large"
    log_level = logging.INFO


class RateLimited(GatewayError):
    status = 429
    type = "rate_limit_exceeded"
    log_level = logging.INFO


class ServiceUnavailable(GatewayError):
    status = 503
    type = "service_unavailable"
    log_level = logging.WARNING


class UpstreamError(GatewayError):
    """Something a provider did; ``retryable`` says whether another attempt may succeed."""

    status = 502
    type = "upstream_error"
    log_level = logging.WARNING
    retryable: ClassVar[bool] = True

    def __init__(
        self,
        message: str,
        *,
        provider: str | None = None,
        param: str | None = None,
        retry_after: float | None = None,
        status: int | None = None,
        error_type: str | None = None,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(
            message, param=param, retry_after=retry_after, status=status, error_type=error_type
        )
        self.provider = provider
        self.is_retryable = self.retryable if retryable is None else retryable


class UpstreamStatusError(UpstreamError):
    """The provider answered an HTTP error; the gateway keeps its meaning."""

    @classmethod
    def from_status(
        cls,
        upstream_status: int,
        message: str,
        *,
        provider: str,
        param: str | None = None,
        upstream_type: str | None = None,
        retry_after: float | None = None,
    ) -> UpstreamError:
        if upstream_status == 429:
            return UpstreamRateLimited(message, provider=provider, retry_after=retry_after)
        if upstream_status in (503, 529):
            return UpstreamUnavailable(message, provider=provider, retry_after=retry_after)
        if upstream_status == 504 or upstream_status == 408:
            return UpstreamTimeout(message, provider=provider)
        if upstream_status >= 500:
            return cls(message, provider=provider, status=502, error_type="upstream_error")
        # A deterministic 4xx: same status, never retried, never failed over. 401/402/403 from a
        # provider mean the gateway's own provider account is wrong or out of credit: the client
        # cannot fix that, so it is a 502 that another provider may serve.
        if upstream_status in (401, 402, 403):
            return cls(
                f"provider rejected the gateway's credentials: {message}",
                provider=provider,
                status=502,
                error_type="upstream_auth_error",
                retryable=True,
            )
        if upstream_status == 404:
            return cls(
                message,
                provider=provider,
                status=404,
                error_type="model_not_found",
                retryable=False,
            )
        return cls(
            message,
            provider=provider,
            param=param,
            status=upstream_status if 400 <= upstream_status < 500 else 502,
            error_type=upstream_type or "invalid_request_error",
            retryable=False,
        )


class UpstreamRateLimited(UpstreamError):
    status = 429
    type = "upstream_rate_limit"


class UpstreamUnavailable(UpstreamError):
    status = 503
    type = "provider_unavailable"


class UpstreamTimeout(UpstreamError):
    status = 504
    type = "upstream_timeout"


class UpstreamProtocolError(UpstreamError):
    """The provider's answer could not be understood (HTML, malformed JSON, a cut body)."""


class FallbacksExhausted(UpstreamError):
    """Every attempt failed; the last one decides the status, all are named in the message."""

    def __init__(self, attempts: list[tuple[str, UpstreamError]]) -> None:
        last = attempts[-1][1]
        causes = "; ".join(f"{model}: {err.http_status} {err.message}" for model, err in attempts)
        retry_after = max(
            (e.retry_after for _, e in attempts if e.retry_after is not None), default=None
        )
        super().__init__(
            f"all {len(attempts)} attempts failed ({causes})",
            provider=last.provider,
            status=last.http_status,
            error_type=last.error_type,
            retry_after=retry_after,
            retryable=False,
        )
        self.attempts = attempts
