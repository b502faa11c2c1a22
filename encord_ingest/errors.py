"""A short hierarchy of errors whose messages say what to do; the CLI maps them to exit codes."""

from __future__ import annotations


class IngestError(Exception):
    """Base of every error the pipeline raises on purpose."""

    exit_code = 3


class UsageError(IngestError):
    """Bad input from the user (arguments, files, configuration): nothing was submitted."""

    exit_code = 2


class ConfigError(UsageError):
    """Configuration that cannot work (missing key, unknown integration, malformed schema)."""


class AbortError(IngestError):
    """The run cannot go on (credentials rejected, bucket missing, Encord unreachable)."""

    exit_code = 3


class CredentialsError(AbortError):
    """A service rejected our credentials."""


class SourceNotFoundError(AbortError):
    """The bucket, container or folder to list does not exist."""


class EncordUnavailableError(AbortError):
    """Encord kept failing after every retry."""


class LedgerLockedError(AbortError):
    """Another run holds the lease on this source."""
