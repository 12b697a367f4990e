"""What a timeline step says of the tool call after its decision: the result its harness reported, if any.

The results live in the state store (state/_toolresults.py), read by the caller and handed to the timeline through
its RunState (the log does not depend on the state store). A step shows "no result reported" only in a session
whose harness reports results (one step at least has one): a harness that never reports them is not told, on
every step, what it never promised.
"""

from __future__ import annotations

from typing import Any, Protocol

from tollgate.state._toolresults import describe_duration

#: The decisions after which a tool may have run (a DENY did not).
RAN_AFTER = ("allow", "require_approval")


class ToolRunView(Protocol):
    """A reported result as the timeline reads it (the state store's ToolRun is one)."""

    @property
    def result(self) -> str: ...  # ok / error / interrupted

    @property
    def duration_ms(self) -> int: ...

    @property
    def duration_measured(self) -> bool: ...  # the sidecar measured it from the decision's timestamp

    @property
    def approval_closed(self) -> str: ...  # the approval this result closed ("" when none)


def may_have_run(kind: str, decision: str) -> bool:
    return kind == "tool" and decision in RAN_AFTER


def run_text(run: ToolRunView | None) -> str:
    """"ran: ok in 1.2 s", with the approval it closed; "no result reported" without one."""
    if run is None:
        return "no result reported"
    text = f"ran: {run.result} {describe_duration(run.duration_ms, measured=run.duration_measured)}"
    if run.approval_closed:
        text += f"; closed approval {run.approval_closed} (answered outside Tollgate)"
    return text


def run_dict(run: ToolRunView | None) -> dict[str, Any]:
    """The step's "tool_result" in the timeline's JSON."""
    if run is None:
        return {"reported": False}
    return {"reported": True, "result": run.result, "duration_ms": run.duration_ms,
            "duration_measured": run.duration_measured, "approval_closed": run.approval_closed}
