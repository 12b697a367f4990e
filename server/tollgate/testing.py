"""Capture what Tollgate answered, for your own tests: which calls your agent asked about and what came back.

    from tollgate.testing import capture

    def test_the_agent_never_merges(tollgate_client):
        with capture(tollgate_client) as asked:
            run_agent(tollgate_client, "review PR 7")
        assert "github/merge_pull_request" not in asked.tools(allowed=True)
        asked.assert_all_answered()  # none was a DENY the client made because the sidecar was down
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import overload

from tollgate.client._async import AsyncClient
from tollgate.client._sync import Client
from tollgate.client._values import Decision, Verdict
from tollgate.v1 import authorization_pb2 as pb


@dataclass(frozen=True)
class Asked:
    """One request a client sent (or tried to) and the answer it returned."""

    request: pb.AuthorizeRequest
    decision: Decision

    @property
    def kind(self) -> str:
        """tool, model or budget."""
        return str(self.request.WhichOneof("action"))

    @property
    def action(self) -> str:
        """What was asked about: "server/name" for a tool ("name" for a built-in), "provider/model", or
        "budget:AMOUNT UNIT"."""
        request = self.request
        if self.kind == "tool":
            return f"{request.tool.server}/{request.tool.name}" if request.tool.server else request.tool.name
        if self.kind == "model":
            return f"{request.model.provider}/{request.model.model}"
        return f"budget:{request.budget.amount:g} {request.budget.unit}"


class Captured(Sequence[Asked]):
    """Every Authorize a client made while the capture was open, in order (approval re-asks included)."""

    def __init__(self) -> None:
        self._asked: list[Asked] = []

    def _record(self, request: pb.AuthorizeRequest, decision: Decision) -> None:
        copy = pb.AuthorizeRequest()
        copy.CopyFrom(request)
        self._asked.append(Asked(copy, decision))

    @overload
    def __getitem__(self, index: int) -> Asked: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[Asked]: ...

    def __getitem__(self, index: int | slice) -> Asked | Sequence[Asked]:
        return self._asked[index]

    def __len__(self) -> int:
        return len(self._asked)

    def decisions(self, verdict: Verdict | None = None) -> list[Decision]:
        """The answers, or only those with this verdict."""
        return [a.decision for a in self._asked if verdict is None or a.decision.decision == verdict]

    def tools(self, *, allowed: bool | None = None) -> list[str]:
        """The tool ids asked about ("github/get_pull_request", "Read"), or only the allowed (or not) ones."""
        return [a.action for a in self._asked
                if a.kind == "tool" and (allowed is None or a.decision.allowed == allowed)]

    def assert_all_answered(self) -> None:
        """Fail when any answer was a DENY the client made itself (the sidecar down or too slow)."""
        unanswered = [a for a in self._asked if a.decision.failed_closed]
        if unanswered:
            raise AssertionError(f"{len(unanswered)} of {len(self._asked)} requests got no answer from the "
                                 f"sidecar; first: {unanswered[0].action}: {unanswered[0].decision.error}")


@contextmanager
def capture(client: Client | AsyncClient) -> Iterator[Captured]:
    """Record every request client sends, and its answer, until the block ends."""
    captured = Captured()
    client._observers.append(captured._record)
    try:
        yield captured
    finally:
        client._observers.remove(captured._record)
