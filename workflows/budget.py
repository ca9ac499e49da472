"""A run's budgets: tokens, dollars and a deadline, counted in workflow state.

Counting lives in the workflow (not in a worker or a database) so it is exact through crashes: a
replay recomputes it from history. Spend is what completed calls report (usage), so a call retried
after a crash is never counted twice. Checked before each new piece of work starts (an LLM call of
the run itself, a step); work already running finishes. Pure and deterministic: the clock is
`workflow.now()`, passed in.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from common.models import BudgetStatus, RaiseBudget, ResearchInput, Usage

# History is a budget too. Temporal refuses to grow a run's history past 50,000 events or 50 MB (its
# defaults) and terminates the run, which would then end without a report; long before that it suggests
# continuing as new, which a run does between rounds and while a plan awaits approval. Past these
# thresholds, with a margin for the report's own events, a run stops taking work and writes its report
# from what it has. Read at call time (module attributes), so a test can lower them.
HISTORY_GUARD_EVENTS = 40_000
HISTORY_GUARD_BYTES = 40 * 1024 * 1024


class Budget:
    def __init__(
        self, request: ResearchInput, started_at: datetime, raised: RaiseBudget | None = None
    ) -> None:
        self.tokens = request.token_budget
        self.cost = request.cost_budget_usd
        self.deadline_seconds = request.deadline_seconds
        self.started_at = started_at
        if raised is not None:
            self.apply(raised)

    @property
    def deadline(self) -> datetime | None:
        if self.deadline_seconds is None:
            return None
        return self.started_at + timedelta(seconds=self.deadline_seconds)

    def reached(self, usage: Usage, now: datetime) -> str | None:
        """Which limit is reached, in words, or None."""
        spent = usage.input_tokens + usage.output_tokens
        if self.tokens is not None and spent >= self.tokens:
            return f"the token budget ({spent:,} of {self.tokens:,} tokens spent)"
        if self.cost is not None and usage.cost_usd >= self.cost:
            return f"the cost budget (${usage.cost_usd:.4f} of ${self.cost:.4f} spent)"
        deadline = self.deadline
        if deadline is not None and now >= deadline:
            return f"the deadline ({self.deadline_seconds:g} seconds from the start)"
        return None

    def check_raise(self, raised: RaiseBudget, usage: Usage, now: datetime) -> None:
        """Refuse a raise that changes nothing or would leave a limit still reached."""
        if raised.token_budget is None and raised.cost_budget_usd is None and raised.deadline_seconds is None:
            raise ValueError("name at least one of token_budget, cost_budget_usd, deadline_seconds")
        spent = usage.input_tokens + usage.output_tokens
        if raised.token_budget is not None and raised.token_budget <= spent:
            raise ValueError(f"token_budget {raised.token_budget:,} is not above the {spent:,} tokens spent")
        if raised.cost_budget_usd is not None and raised.cost_budget_usd <= usage.cost_usd:
            raise ValueError(
                f"cost_budget_usd {raised.cost_budget_usd} is not above the ${usage.cost_usd:.4f} spent"
            )
        if raised.deadline_seconds is not None:
            if self.started_at + timedelta(seconds=raised.deadline_seconds) <= now:
                raise ValueError(f"deadline_seconds {raised.deadline_seconds:g} has already passed")

    def apply(self, raised: RaiseBudget) -> None:
        if raised.token_budget is not None:
            self.tokens = raised.token_budget
        if raised.cost_budget_usd is not None:
            self.cost = raised.cost_budget_usd
        if raised.deadline_seconds is not None:
            self.deadline_seconds = raised.deadline_seconds

    def admitted(self, token_budget: int | None, cost_budget_usd: float | None) -> None:
        """The limits a scheduled run was admitted with (runs.admit), in place of its schedule's: under
        its tenant's daily allowance, they may be lower, or set where the schedule set none."""
        self.tokens = token_budget
        self.cost = cost_budget_usd

    def as_raise(self) -> RaiseBudget:
        """The limits as they stand, for a continued run to start from."""
        return RaiseBudget(
            token_budget=self.tokens, cost_budget_usd=self.cost, deadline_seconds=self.deadline_seconds
        )

    def tokens_left(self, usage: Usage) -> int | None:
        if self.tokens is None:
            return None
        return max(self.tokens - usage.input_tokens - usage.output_tokens, 0)

    def status(self, usage: Usage, now: datetime, reached: str | None) -> BudgetStatus:
        deadline = self.deadline
        return BudgetStatus(
            token_budget=self.tokens,
            tokens_spent=usage.input_tokens + usage.output_tokens,
            tokens_remaining=self.tokens_left(usage),
            cost_budget_usd=self.cost,
            cost_spent_usd=usage.cost_usd,
            cost_remaining_usd=None if self.cost is None else max(self.cost - usage.cost_usd, 0.0),
            deadline=deadline.isoformat() if deadline else None,
            seconds_remaining=None if deadline is None else max((deadline - now).total_seconds(), 0.0),
            reached=reached,
        )
