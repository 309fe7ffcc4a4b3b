"""Errors for user mistakes in a stack's config; each message names the key and the fix."""

from __future__ import annotations

from pulumi.errors import RunError


class ConfigError(RunError, ValueError):
    """A stack config value is missing, malformed or inconsistent.

    A `pulumi.RunError`, so `pulumi preview` prints the message without a Python traceback;
    also a `ValueError`, the exception callers expect for bad input.
    """

    def __init__(self, key: str, problem: str, fix: str) -> None:
        self.key = key
        qualified = key if ":" in key else f"stratus:{key}"
        super().__init__(f"config `{qualified}`: {problem}. Fix: {fix}")


class BudgetExceededError(ConfigError):
    """The estimated hourly cost is above `max-hourly-usd`."""
