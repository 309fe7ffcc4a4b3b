"""Errors for user mistakes in a stack's config; each message names the key and the fix."""

from __future__ import annotations

from collections.abc import Callable, Sequence

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


class ConfigErrors(ConfigError):
    """Several config problems found in one pass: every bad key is reported, not only the first.

    `errors` holds each problem (a `ConfigError` naming its key); `key` is the first one's.
    """

    def __init__(self, errors: Sequence[ConfigError]) -> None:
        flat: list[ConfigError] = []
        for error in errors:
            flat += error.errors if isinstance(error, ConfigErrors) else [error]
        self.errors = flat
        self.key = flat[0].key
        lines = "\n".join(f"  {i}. {error}" for i, error in enumerate(flat, 1))
        super(ConfigError, self).__init__(f"{len(flat)} config problems:\n{lines}")

    @property
    def keys(self) -> list[str]:
        """The keys of the problems, in the order found."""
        return [error.key for error in self.errors]


def collect(*checks: Callable[[], object]) -> None:
    """Run every check, then raise what they raised: nothing, the one `ConfigError`, or a
    `ConfigErrors` with all of them (checks that depend on each other belong in one callable)."""
    found: list[ConfigError] = []
    for check in checks:
        try:
            check()
        except ConfigError as error:
            found.append(error)
    if len(found) == 1:
        raise found[0]
    if found:
        raise ConfigErrors(found)
