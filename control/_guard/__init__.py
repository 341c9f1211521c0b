"""Rate limits and fail-closed daily budgets per (tenant, context, purpose).

A call goes through a `Guard` twice. `admit` takes, in one atomic step, a request and the
estimated tokens from the token buckets and a worst-case reservation from the day's budget
ledger, or refuses the call (`RateLimited`, `BudgetExceeded`, `BudgetUnverifiable`) having
taken nothing. After the call, `settle` replaces the reservation by the actual cost and
corrects the token estimate; `release` drops the reservation of a call that cost nothing
(an error before the provider billed, a cancellation). The check and the increment happen
under one lock (one Lua script on Redis): no interleaving of concurrent admits can let two
reservations both fit into the room of one, which is the classic check-then-increment bug.

One job per module:

- `_kernel`: keys, tickets, money in nano-dollars, the budget day, the decision math.
- `_memory`: `MemoryGuard`, the in-process backend (its overshoot bound is written there).
- `_redis`: `RedisGuard`, shared state in Redis (one round trip a call; its overshoot bound
  and what happens when Redis loses its state are written there): its decisions are flows
  that `_redis_driver` runs sync or async, `_redis_wire` encodes the commands without I/O,
  `_redis_io` sends them, `_redis_queue` holds settlements in wait, and the Lua scripts are
  the `.lua` files beside them.
- `_reconcile`: seeding the ledger from the analytics budget state (the rollups).
- `_make`: the backend the settings name.
"""

from comptroller.control._guard._kernel import (
    Guard,
    GuardKey,
    LedgerState,
    Ticket,
    TicketState,
    _BudgetDay,
    from_nanos,
    to_nanos,
)
from comptroller.control._guard._make import make_guard
from comptroller.control._guard._memory import MemoryGuard
from comptroller.control._guard._reconcile import (
    BudgetReconciler,
    ReconcileSource,
    budget_state_url_source,
    make_reconciler,
    spend_by_day,
)
from comptroller.control._guard._redis import RedisGuard

__all__ = [
    "BudgetReconciler",
    "Guard",
    "GuardKey",
    "LedgerState",
    "MemoryGuard",
    "ReconcileSource",
    "RedisGuard",
    "Ticket",
    "TicketState",
    "_BudgetDay",
    "budget_state_url_source",
    "from_nanos",
    "make_guard",
    "make_reconciler",
    "spend_by_day",
    "to_nanos",
]
