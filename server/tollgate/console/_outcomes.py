"""What the money bought: sessions, outcomes and cost per successful outcome, per agent and per workflow.

Pure functions over three inputs the Outcomes page reads (pages/outcomes.py), so the figures are tested on fixed
data:

- the sessions with at least one decision in the time range, from the decision log (decisions, denials,
  approvals asked; agent and workflow as the session's newest record in the range names them);
- the outcomes their harnesses reported (ReportOutcome);
- what each session cost: the **committed usd of the session's whole run in the spend ledger** — what ReportUsage
  reported as actually spent. Not the decision records' reservations: a reservation is the harness's estimate
  before the step (released down to what was reported, or in full when it expires unreported), so summing them
  would charge money never spent. Live reservations not reported yet are shown beside the cost, never in it; a
  session's whole run is counted even when only part of it falls in the range (its cost is not split in time).

The definitions, each for a group of sessions (an agent, a workflow, or all):

- outcomes: a session's own outcome (task_id "") when reported, else each of its tasks' outcomes; a session with
  none is "unreported";
- success rate = succeeded ÷ outcomes counted;
- cost per successful outcome = the cost of **every** session of the group ÷ its successful outcomes — failures,
  abandoned and unreported sessions cost money too, and hiding them would flatter the number;
- approvals per session (human intervention) = decisions that answered require_approval ÷ sessions;
- denial rate = deny decisions ÷ decisions.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from tollgate.state._outcomes import OUTCOMES, Outcome, SessionCost

#: How the page groups sessions.
GROUPINGS = ("agent", "workflow")
#: The name a group of sessions without a workflow is shown under.
NO_WORKFLOW = "(none)"


@dataclass(frozen=True)
class SessionFacts:
    """One session as the decision log shows it over the range."""

    session: str
    agent: str
    workflow: str
    decisions: int
    denials: int
    #: Decisions that answered require_approval.
    approvals_asked: int


@dataclass(frozen=True)
class Figures:
    """The figures of one group of sessions."""

    name: str
    sessions: int
    #: Sessions with at least one outcome counted.
    reported: int
    #: Outcomes counted, by kind (every kind of OUTCOMES present, 0 included).
    outcomes: Mapping[str, int]
    decisions: int
    denials: int
    approvals: int
    #: Committed usd of the group's sessions (their whole runs).
    cost: float
    #: Live usd reservations not reported yet (not part of cost).
    reserved: float = 0.0
    #: A session's ledger holds a value the ledger never writes: cost is not to be trusted.
    cost_invalid: bool = False
    #: Labels of the outcomes counted, most common first.
    labels: tuple[tuple[str, int], ...] = field(default=())

    @property
    def counted(self) -> int:
        return sum(self.outcomes.values())

    @property
    def succeeded(self) -> int:
        return self.outcomes.get("succeeded", 0)

    @property
    def unreported(self) -> int:
        return self.sessions - self.reported

    @property
    def success_rate(self) -> float | None:
        return self.succeeded / self.counted if self.counted else None

    @property
    def cost_per_success(self) -> float | None:
        """cost ÷ succeeded; None when nothing succeeded (the cost was spent for no success: shown as such)."""
        return self.cost / self.succeeded if self.succeeded else None

    @property
    def approvals_per_session(self) -> float | None:
        return self.approvals / self.sessions if self.sessions else None

    @property
    def denial_rate(self) -> float | None:
        return self.denials / self.decisions if self.decisions else None


def counted_outcomes(outcomes: Iterable[Outcome]) -> dict[str, list[Outcome]]:
    """Each session's outcomes as counted: its own (task_id "") when reported, else its tasks'."""
    found: dict[str, list[Outcome]] = {}
    for outcome in outcomes:
        found.setdefault(outcome.session_id, []).append(outcome)
    return {session: [o for o in listed if o.task_id == ""] or listed for session, listed in found.items()}


def group_name(facts: SessionFacts, by: str) -> str:
    if by == "agent":
        return facts.agent or "(unknown)"
    if by == "workflow":
        return facts.workflow or NO_WORKFLOW
    raise ValueError(f"by: must be one of {', '.join(GROUPINGS)}, not {by!r}")


def figures(sessions: Sequence[SessionFacts], outcomes: Iterable[Outcome], costs: Mapping[str, SessionCost], *,
            by: str) -> list[Figures]:
    """The figures of each group (by agent or workflow), the most expensive first, then by name."""
    counted = counted_outcomes(outcomes)
    groups: dict[str, list[SessionFacts]] = {}
    for facts in sessions:
        groups.setdefault(group_name(facts, by), []).append(facts)
    found = [summarise(name, members, counted, costs) for name, members in groups.items()]
    return sorted(found, key=lambda f: (-f.cost, -f.sessions, f.name))


def total(sessions: Sequence[SessionFacts], outcomes: Iterable[Outcome],
          costs: Mapping[str, SessionCost]) -> Figures:
    """The figures of every session together."""
    return summarise("all", sessions, counted_outcomes(outcomes), costs)


def summarise(name: str, members: Sequence[SessionFacts], counted: Mapping[str, Sequence[Outcome]],
              costs: Mapping[str, SessionCost]) -> Figures:
    kinds: Counter[str] = Counter({kind: 0 for kind in OUTCOMES})
    labels: Counter[str] = Counter()
    reported = 0
    cost = reserved = 0.0
    invalid = False
    for facts in members:
        mine = counted.get(facts.session, ())
        reported += bool(mine)
        for outcome in mine:
            kinds[outcome.outcome] += 1
            labels.update(outcome.labels)
        spent = costs.get(facts.session)
        if spent is not None:
            cost += spent.committed
            reserved += spent.reserved
            invalid = invalid or spent.invalid
    return Figures(name=name, sessions=len(members), reported=reported, outcomes=dict(kinds),
                   decisions=sum(f.decisions for f in members), denials=sum(f.denials for f in members),
                   approvals=sum(f.approvals_asked for f in members), cost=cost, reserved=reserved,
                   cost_invalid=invalid, labels=tuple(sorted(labels.items(), key=lambda kv: (-kv[1], kv[0]))))


def percent(value: float | None) -> str:
    """"67 %" (one decimal below 10 %), or "—" when there is nothing to divide."""
    if value is None:
        return "—"
    share = 100 * value
    return f"{share:.1f} %" if 0 < share < 10 else f"{share:.0f} %"


def ratio(value: float | None) -> str:
    """A per-session figure: "0.33", or "—"."""
    return "—" if value is None else f"{value:.2f}"
