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
        first = next(iter(self.failures.items()))
        more = f" (and {len(self.failures) - 1} more file(s))" if len(self.failures) > 1 else ""
        super().__init__(f"{first[1]}{more}; every other file was committed")
