"""The ceiling of the benchmark: a workflow that only sleeps on one timer.

It runs on the same SDK, sandbox and dev server as the ticket workflow and is
started the same way, with update-with-start, so the gap between the two
figures is the ticket's own work.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from temporalio import workflow

# The SDK rejects a timer of zero length.
MINIMUM_TIMER = timedelta(milliseconds=1)


@workflow.defn(name="BareTimerWorkflow")
class BareTimerWorkflow:
    @workflow.run
    async def run(self, due_at: str) -> None:
        """Sleep until ``due_at``, an ISO 8601 time with offset, then complete."""
        due = datetime.fromisoformat(due_at)
        await workflow.sleep(max(due - workflow.now(), MINIMUM_TIMER))

    @workflow.update(name="started")
    def started(self) -> None:
        """Return at once: update-with-start then ends with the first workflow task."""
