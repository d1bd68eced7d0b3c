"""The mapping file's health as the workers see it: while a changed file does not validate they go
on with the last good mapping and record the problem here (`{prefix}:mapping:invalid`) for `status`."""
from __future__ import annotations

from pydantic import BaseModel


class MappingProblem(BaseModel):
    """The mapping file does not validate; the workers go on with the last good mapping."""

    since: str  # Beijing time the file was first found invalid
    error: str
    file_changed_at: str  # the invalid file's modification time (Beijing)
    last_good_from: str  # modification time of the file the mapping in use was read from (Beijing)
    last_good_fingerprint: str

    def line(self) -> str:
        return (f"mapping file invalid since {self.since}: {self.error}; "
                f"using the last good mapping from {self.last_good_from}")


def mapping_problem_key(prefix: str) -> str:
    return f"{prefix}:mapping:invalid"
