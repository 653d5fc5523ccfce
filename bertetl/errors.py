"""One exception hierarchy for every user-facing failure."""

from __future__ import annotations


class BertEtlError(Exception):
    """Base of all errors bertetl reports to users; the message says what to do."""


class InputError(BertEtlError):
    """The input data cannot be used: a missing or mistyped column, an unreadable file."""


class ModelError(BertEtlError):
    """A model directory is missing, incomplete, or of an unsupported kind."""


class CommitError(BertEtlError):
    """Output could not be written or committed."""


class FilesFailedError(BertEtlError):
    """Some input files failed; the others were committed. `failures` maps file to cause."""

    def __init__(self, failures: dict[str, str], report: object = None) -> None:
        self.failures = dict(failures)
        self.report = report
        cause = next(iter(self.failures.values()))
        count = len(self.failures)
        more = f" (and {count - 1} more failed file(s); the report lists all)" if count > 1 else ""
        super().__init__(f"{cause}{more}; files that did not fail were committed")
