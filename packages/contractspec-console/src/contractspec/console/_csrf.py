"""CSRF tokens: signed with itsdangerous, bound to the authenticated actor and tenant."""

from __future__ import annotations

import hmac
from typing import Any, Final

from itsdangerous import BadData, URLSafeTimedSerializer

from contractspec.core.context import CallContext

__all__ = ["CSRF_FIELD", "CsrfSigner"]

#: Name of the hidden form field carrying the token (also read from the `X-CSRF-Token` header).
CSRF_FIELD: Final = "_csrf"
CSRF_HEADER: Final = "x-csrf-token"


def _subject(call: CallContext) -> str:
    return f"{call.actor.kind.value}:{call.actor.id}|{call.org_id or ''}"


class CsrfSigner:
    """Issues and checks tokens `sign({"s": "<kind>:<actor id>|<org>"})` with a time limit.

    A token is valid only for the caller it was issued to (same actor and tenant), for
    `max_age_s` seconds, and only with the console's `secret_key`.
    """

    __slots__ = ("_max_age", "_serializer")

    def __init__(self, secret_key: str | bytes, *, max_age_s: int) -> None:
        self._serializer = URLSafeTimedSerializer(secret_key, salt="contractspec.console.csrf")
        self._max_age = max_age_s

    def issue(self, call: CallContext) -> str:
        """A fresh token for `call`'s actor and tenant."""
        token: Any = self._serializer.dumps({"s": _subject(call)})
        return str(token)

    def check(self, token: str | None, call: CallContext) -> bool:
        """Whether `token` was issued by this console to `call`'s actor and tenant, and is fresh."""
        if not token:
            return False
        try:
            data = self._serializer.loads(token, max_age=self._max_age)
        except BadData:
            return False
        subject = data.get("s") if isinstance(data, dict) else None
        return isinstance(subject, str) and hmac.compare_digest(
            subject.encode("utf-8", "surrogatepass"),
            _subject(call).encode("utf-8", "surrogatepass"),
        )
