"""What the command modules share."""

from __future__ import annotations

DEFAULT_SERVER = "127.0.0.1:50051"
# Exit codes of `tollgate authorize`, so scripts can branch on the verdict; 1 is any error.
EXIT_ALLOW, EXIT_ERROR, EXIT_DENY, EXIT_APPROVAL = 0, 1, 2, 3
