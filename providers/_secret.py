"""A string that never shows itself (:class:`Secret`), and the one scrubber (:class:`Scrubber`)."""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping
from urllib.parse import quote, quote_plus

__all__ = ["Scrubber", "Secret"]


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


#: A run of at least this many leading characters of a secret counts as the secret: a
#: vendor (or a quote cut at a length limit) may show only the start of a key.
PREFIX_CHARS = 8

#: Secrets shorter than this are not scrubbed (``***`` everywhere would hide nothing).
MIN_SECRET_CHARS = 4


class Scrubber:
    """Replaces every form of a few secrets in a string with ``***``.

    The one scrubber every string leaving an adapter passes through (messages, request
    ids, quoted bodies, kept headers).  For each secret of 4+ characters it hides:

    - the secret itself;
    - its percent-encoded forms (``quote(s, safe="")`` and ``quote_plus(s)``), as a URL,
      a query string or a form body would carry it;
    - any run of at least :data:`PREFIX_CHARS` leading characters of either form — the
      start of a key that a vendor, or a quote cut at a length limit, shows.

    Finding nothing costs one substring test per probe (the first characters of each
    form, usually one probe per secret), so it can run on every answer's headers.

    Example::

        >>> scrub = Scrubber([Secret("sk-live-0123456789")])
        >>> scrub("bad key sk-live-0123456789, again sk-live-01")
        'bad key ***, again ***'
        >>> scrub("key=sk-live-0123456789") == "key=***"
        True
    """

    __slots__ = ("_forms", "_probes", "active")

    def __init__(self, secrets: Iterable[Secret | str]) -> None:
        forms: list[str] = []
        for secret in secrets:
            value = secret.reveal() if isinstance(secret, Secret) else secret
            if len(value) < MIN_SECRET_CHARS:
                continue
            for form in (value, quote(value, safe=""), quote_plus(value)):
                if form not in forms:
                    forms.append(form)
        # Longest first, so a form that contains another is replaced whole.
        self._forms = tuple(sorted(forms, key=len, reverse=True))
        self._probes = tuple(dict.fromkeys(form[:PREFIX_CHARS] for form in self._forms))
        #: Whether there is anything to scrub (``bool(scrubber)``; an attribute, for the
        #: hot path, where a ``__bool__`` call per answer shows).
        self.active = bool(self._forms)

    def __bool__(self) -> bool:
        return self.active

    def __repr__(self) -> str:
        return f"Scrubber(<{len(self._forms)} forms>)"

    def found_in(self, text: str) -> bool:
        """Whether ``text`` may hold a secret (``False`` means it certainly does not)."""
        for probe in self._probes:  # noqa: SIM110 - a loop, not a generator: per answer
            if probe in text:
                return True
        return False

    def __call__(self, text: str) -> str:
        """``text`` with every form of every secret replaced by ``***``."""
        for probe in self._probes:
            if probe in text:
                return self._replace(text)
        return text

    def _replace(self, text: str) -> str:
        # Each occurrence of a probe is masked together with the longest run of any
        # form that starts there: the whole key, an encoded key, or a cut one.
        forms = self._forms
        out: list[str] = []
        done = 0
        while True:
            start = -1
            for probe in self._probes:
                found = text.find(probe, done)
                if found >= 0 and (start < 0 or found < start):
                    start = found
            if start < 0:
                break
            end = start
            for form in forms:
                stop = start
                limit = min(len(text), start + len(form))
                while stop < limit and text[stop] == form[stop - start]:
                    stop += 1
                end = max(end, stop)
            out.append(text[done:start])
            out.append("***")
            done = end
        out.append(text[done:])
        return "".join(out)

    def mapping(self, values: Mapping[str, str]) -> dict[str, str]:
        """A copy of ``values`` with every value (and name) scrubbed."""
        return {self(name): self(value) for name, value in values.items()}
