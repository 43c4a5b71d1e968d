"""CORS: which web pages may call the API from a browser (the `cors` section of the config).

A browser sends a preflight (OPTIONS with Origin and Access-Control-Request-Method) before a
POST with a JSON body or an Authorization header. It carries no credential, so it is answered
by the request context before any gate. Every other request from an allowed origin gets
Access-Control-Allow-Origin, with every response header exposed (x-request-id, Retry-After,
x-ratelimit-*: what the openai JS SDK reads). Never Access-Control-Allow-Credentials: keys
travel in the Authorization header the page sets, not in cookies. The default, every origin,
is what OpenAI's API and vLLM's server answer.
"""

from __future__ import annotations

from gateway.errors import Forbidden

Header = tuple[bytes, bytes]

_ALLOW_ORIGIN = b"access-control-allow-origin"
_EXPOSE = (b"access-control-expose-headers", b"*")
_VARY = (b"vary", b"Origin")
_METHODS = (b"access-control-allow-methods", b"GET, POST, PUT, PATCH, DELETE, OPTIONS")
_REQUEST_METHOD = b"access-control-request-method"
_REQUEST_HEADERS = b"access-control-request-headers"


class Cors:
    def __init__(self, allow_origins: list[str], max_age_s: int) -> None:
        """`allow_origins`: scheme://host[:port] each, or "*" for every origin."""
        self.every = "*" in allow_origins
        self.origins = frozenset(o.encode() for o in allow_origins)
        self.max_age = (b"access-control-max-age", str(max_age_s).encode())

    def headers(self, origin: bytes) -> list[Header]:
        """What an answer to a request from `origin` carries ([] for an origin not allowed)."""
        if self.every:
            return [(_ALLOW_ORIGIN, b"*"), _EXPOSE]
        if origin in self.origins:
            return [(_ALLOW_ORIGIN, origin), _VARY, _EXPOSE]
        return [_VARY]  # a cache must not hand this answer to an allowed origin

    def preflight(self, origin: bytes, request_headers: list[Header]) -> list[Header]:
        """The headers of the 204 that answers a preflight; Forbidden if `origin` may not call
        the API."""
        allowed = self.headers(origin)
        if len(allowed) == 1:
            raise Forbidden(
                f"The origin '{origin.decode('latin-1')}' is not in cors.allow_origins.",
                code="origin_not_allowed",
            )
        asked = next((v for k, v in request_headers if k == _REQUEST_HEADERS), None)
        out = [*allowed, _METHODS, self.max_age]
        if asked is not None:  # "*" would not cover Authorization: name what the page asks
            out += [(b"access-control-allow-headers", asked)]
        return out


def is_preflight(method: str, request_headers: list[Header]) -> bool:
    return method == "OPTIONS" and any(k == _REQUEST_METHOD for k, _ in request_headers)
