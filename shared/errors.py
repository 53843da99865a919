"""Errors meant for the user: printed as one line, no traceback, with a chosen exit code."""

from __future__ import annotations


class OpenAIMError(Exception):
    """A problem the user can fix (bad path, bad config, corrupt artifact). Printed as one line."""

    exit_code = 1


class ConfigError(OpenAIMError):
    """A config value is invalid. Exit code 2, like a usage error."""

    exit_code = 2


class InputError(OpenAIMError):
    """An input file or URL is missing, unreadable or corrupt."""

    exit_code = 1


class PartialFailure(OpenAIMError):
    """A stage wrote every output it could, but some of its parts failed (named in the message)."""

    exit_code = 1
