"""What a user must read in a failed command's stderr: one helper for every test that counts error lines.

Off a terminal the CLI logs one plain line per record (shared.cli_common.setup_logging:
``2026-01-02 03:04:05 INFO openaim.curation: ...``); progress records are not part of an error.
"""

from __future__ import annotations

import re

_RECORD = r"\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d ({levels}) openaim"
PROGRESS_RECORD = re.compile(_RECORD.format(levels="INFO|DEBUG"))
PROGRESS_OR_WARNING_RECORD = re.compile(_RECORD.format(levels="INFO|DEBUG|WARNING"))


def problem_lines(stderr: str, warnings: bool = True) -> list[str]:
    """The non-blank lines of ``stderr`` other than the plain log's INFO/DEBUG records (and, with
    ``warnings=False``, its WARNING records: where a logged warning may precede the error line)."""
    noise = PROGRESS_RECORD if warnings else PROGRESS_OR_WARNING_RECORD
    return [ln for ln in stderr.splitlines() if ln.strip() and not noise.match(ln)]
