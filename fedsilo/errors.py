"""The root of the errors fedsilo raises on purpose (drawn in ``fedsilo/__init__.py``)."""

from __future__ import annotations

__all__ = ["FedsiloError"]


class FedsiloError(Exception):
    """Base of the errors raised on purpose by the ``fedsilo`` base and the ``fedsilo`` command.

    Most subclasses also derive from :class:`ValueError` (and ``TaskNotFoundError`` from
    :class:`LookupError`): callers across the daemons catch those built-in classes for bad input,
    so the specific errors keep them as a second base.
    """
