"""A string that never shows itself: API keys live in :class:`Secret`."""

from __future__ import annotations

import hmac

__all__ = ["Secret"]


class Secret:
    """Holds a secret value; ``str``, ``repr`` and formatting show ``***``.

    Only :meth:`reveal` gives the value back, so an accidental log line, f-string,
    exception message or ``repr`` of a config never carries the key.

    Example::

        >>> key = Secret("sk-live-123")
        >>> key
        Secret('***')
        >>> f"{key}"
        '***'
        >>> key.reveal()
        'sk-live-123'
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError("Secret takes a str")
        self._value = value

    def reveal(self) -> str:
        """The secret value. Call it only where the value is sent, never to show it."""
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "Secret('***')"

    def __str__(self) -> str:
        return "***"

    def __format__(self, spec: str) -> str:
        return "***"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __reduce__(self) -> tuple[object, ...]:
        # Pickling would write the value somewhere we do not control.
        raise TypeError("a Secret cannot be pickled")
