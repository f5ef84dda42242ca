"""Which statements leave session state behind (so release can skip the reset).

asyncpool's default reset (``reset="auto"``) costs no server round trip when the
borrower ran only ordinary statements. To know that, every statement sent
through a pooled connection is classified once (the verdict is cached by query
text, so the hot path is one dict lookup): a statement *may leave session state*
when it could change something that outlives its transaction and that the next
borrower would inherit:

- ``SET`` / ``RESET`` / ``set_config(...)`` (settings, roles, session authorization),
- ``LISTEN``, advisory locks (``pg_advisory_*``), ``DECLARE`` (held cursors),
- ``PREPARE`` / ``DEALLOCATE``, ``DISCARD``, ``LOAD``,
- temporary objects (``TEMP`` / ``TEMPORARY``, also ``pg_temp``),
- ``DO`` blocks and ``CALL`` of procedures (their bodies are opaque to us).

The classifier is deliberately conservative (a false positive costs one reset
round trip, a false negative would leak state). What it cannot see: state changed
*inside* server-side functions called from ordinary ``SELECT`` statements (other
than ``set_config`` and the advisory-lock functions, which are matched by name).
Borrowers that do that should call :meth:`PooledConnection.mark_dirty` or run the
pool with ``reset="full"``.
"""

from __future__ import annotations

import re

__all__ = (
    "may_leave_session_state",
    "opens_transaction_block",
    "plain",
    "remember_plain",
    "session_feature",
)

# Statement keywords at the start of a statement (after optional comments/whitespace).
_LEADING = re.compile(
    r"(?:^|;)\s*(?:(?:--[^\n]*\n|/\*.*?\*/)\s*)*"
    r"(set|reset|listen|declare|prepare|deallocate|discard|load|do|call|begin|start|"
    r"savepoint|rollback|commit|end|abort|lock|create)\b",
    re.IGNORECASE | re.DOTALL,
)
# Words or function names anywhere in the text that betray session state.
_ANYWHERE = re.compile(
    r"\b(?:set_config|pg_advisory_lock|pg_advisory_lock_shared|pg_try_advisory_lock|"
    r"pg_try_advisory_lock_shared|temp|temporary|pg_temp|into\s+temp)\b",
    re.IGNORECASE,
)
# Leading keywords that are harmless on their own (transaction control is tracked
# through the protocol's transaction status; ``CREATE`` is harmless unless TEMP,
# which _ANYWHERE catches; ``LOCK TABLE`` is transaction-scoped).
_HARMLESS_LEADING = frozenset(
    {"begin", "start", "savepoint", "rollback", "commit", "end", "abort", "lock", "create"}
)

_cache: dict[str, bool] = {}
_CACHE_LIMIT = 8192

#: Statements seen to be plain: they leave no session state and open no transaction
#: block. Most statements are, so a query method tests this set first (one lookup).
plain: set[str] = set()


def remember_plain(query: str) -> None:
    """Add ``query`` to :data:`plain` (the caller has classified it); bounded."""
    if len(plain) >= _CACHE_LIMIT:
        plain.clear()
    plain.add(query)


def _classify(query: str) -> bool:
    if _ANYWHERE.search(query):
        return True
    for match in _LEADING.finditer(query):
        word = match.group(1).lower()
        if word not in _HARMLESS_LEADING:
            return True
    return False


def may_leave_session_state(query: str) -> bool:
    """Return True when ``query`` may change session state the next borrower would see."""
    verdict = _cache.get(query)
    if verdict is None:
        verdict = _classify(query)
        if len(_cache) >= _CACHE_LIMIT:
            _cache.clear()
        _cache[query] = verdict
    return verdict


# Statements that need a server session of their own (they cannot work behind a
# transaction pooler, where consecutive transactions may run on different servers).
_SESSION_ONLY = re.compile(
    r"(?:^|;)\s*(?:(?:--[^\n]*\n|/\*.*?\*/)\s*)*"
    r"(set(?!\s+(?:local|transaction|constraints)\b)|reset|listen|prepare|load)\b"
    r"|\b(pg_advisory_lock|pg_advisory_lock_shared|pg_try_advisory_lock|"
    r"pg_try_advisory_lock_shared|with\s+hold)\b"
    r"|\bcreate\s+(?:(?:global|local)\s+)?(temp|temporary)\b(?![^;]*\bon\s+commit\s+drop\b)",
    re.IGNORECASE | re.DOTALL,
)
# Statements that open a transaction block (impossible behind a statement pooler).
_TRANSACTION_BLOCK = re.compile(
    r"(?:^|;)\s*(?:(?:--[^\n]*\n|/\*.*?\*/)\s*)*(begin|start\s+transaction)\b",
    re.IGNORECASE | re.DOTALL,
)


def session_feature(query: str) -> str | None:
    """Name the session-level feature ``query`` uses (e.g. ``"SET"``), or None.

    Used behind a transaction pooler, where such statements would leak state to
    other clients or silently not work.
    """
    match = _SESSION_ONLY.search(query)
    if match is None:
        return None
    return (match.group(1) or match.group(2) or "TEMP").upper()


def opens_transaction_block(query: str) -> bool:
    """True when ``query`` starts a transaction block (``BEGIN``/``START TRANSACTION``)."""
    return _TRANSACTION_BLOCK.search(query) is not None
