"""Short texts for error messages: a few items of a list (:func:`some`)."""

from __future__ import annotations


def some(items, n: int = 5) -> str:
    """The first ``n`` items for a message, with how many more there are."""
    items = list(items)
    shown = ", ".join(str(i) if str(i).startswith(("'", '"')) else repr(i) for i in items[:n])
    return shown + (f" and {len(items) - n} more" if len(items) > n else "")
