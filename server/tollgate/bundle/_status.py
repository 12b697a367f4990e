"""What a bundle source reports: its state (as OPA's plugin status has it), the active revision, the last failure."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime


class SourceState(enum.Enum):
    """The bundle source's state, as OPA's plugin status has it."""

    NOT_READY = "NOT_READY"  # nothing activated yet, no error yet
    OK = "OK"  # a bundle is active and the last poll went well
    ERROR = "ERROR"  # the last poll failed, or the revision it found was refused


@dataclass(frozen=True)
class Activation:
    """A revision that became active."""

    time: datetime
    revision: str
    digest: str
    #: The key ID of the signature that verified ("" when unsigned).
    signed_by: str = ""
    #: Activated from DATA_DIR/bundles/last-good.tar.gz because the source was unreachable or refused.
    from_persisted: bool = False


@dataclass(frozen=True)
class Failure:
    """A poll or an activation that failed."""

    time: datetime
    message: str
    #: download, too_large, unsigned, signature, corrupt, compile, smoke_test, rollback.
    reason: str


@dataclass(frozen=True)
class BundleStatus:
    source: str
    state: SourceState
    active: Activation | None
    last_error: Failure | None
    etag: str
    last_poll: datetime | None
