"""Exception types shared across ffnflow."""

from __future__ import annotations


class InputError(ValueError):
    """Bad user input (file, volume spec, config value).

    The message always names the offending input (path / spec / config key)
    and states the problem, so it can be shown to the user verbatim.
    """
