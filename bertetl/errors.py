"""One exception hierarchy for every user-facing failure."""

from __future__ import annotations

import errno


class BertEtlError(Exception):
    """Base of all errors bertetl reports to users; the message says what to do."""


class InputError(BertEtlError):
    """The input data cannot be used: a missing or mistyped column, an unreadable file."""


class ModelError(BertEtlError):
    """A model directory is missing, incomplete, or of an unsupported kind."""


class ConfigError(BertEtlError, ValueError):
    """An option's value cannot be used: a label file with duplicate labels or empty
    descriptions, clashing head names. A `ValueError` too, so pydantic reports it as the
    option's validation error (the CLI: one line naming the option, exit code 2)."""


class CommitError(BertEtlError):
    """Output could not be written or committed."""


class TransientError(BertEtlError):
    """A failure that may pass on a retry (an I/O error on flaky storage); flows retry it."""


class ExecutorError(BertEtlError):
    """The executor cannot run: Ray is not installed, unreachable, or lacks what was asked."""


class OrchestrationError(BertEtlError):
    """Prefect's API could not be started or reached."""


class FilesFailedError(BertEtlError):
    """Some input files failed; the others were committed. `failures` maps file to cause."""

    def __init__(
        self,
        failures: dict[str, str],
        report: object = None,
        outcome: str = "files that did not fail were committed",
    ) -> None:
        self.failures = dict(failures)
        self.report = report
        cause = next(iter(self.failures.values()))
        count = len(self.failures)
        more = f" (and {count - 1} more failed file(s); the report lists all)" if count > 1 else ""
        super().__init__(f"{cause}{more}; {outcome}")


class PartitionsFailedError(BertEtlError):
    """Some partitions (or chunks) failed after their retries; the others were committed."""

    def __init__(self, failures: dict[str, str], rows: list | None = None) -> None:
        self.failures = dict(failures)
        self.rows = list(rows or [])  # the run's summary rows, failed ones included
        first, cause = next(iter(self.failures.items()))
        count = len(self.failures)
        more = f" (and {count - 1} more; the run summary lists all)" if count > 1 else ""
        super().__init__(f"{first} failed: {cause}{more}; every other partition was committed")


#: errno values worth retrying: the storage or network may recover on its own.
TRANSIENT_ERRNOS = frozenset(
    {
        errno.EIO,
        errno.EAGAIN,
        errno.EBUSY,
        errno.EINTR,
        errno.ETIMEDOUT,
        errno.ESTALE,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.ECONNREFUSED,
        errno.ENETDOWN,
        errno.ENETUNREACH,
        errno.EHOSTUNREACH,
    }
)


def is_transient(error: BaseException) -> bool:
    """True when `error` (or what caused it) is an I/O failure that may pass on a retry; a
    corrupt file, a schema problem or a missing model is permanent."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, TransientError):
            return True
        if isinstance(current, TimeoutError | ConnectionError):
            return True
        if isinstance(current, OSError) and current.errno in TRANSIENT_ERRNOS:
            return True
        current = current.__cause__ or current.__context__
    return False
