"""Growing a model's stored front (method.md section 5 at serving time): measure the configurations of
highest expected hypervolume improvement, store them, refit the GP, repeat.

A front with no proposals yet (too few measured points for the GP) starts from the allocator's
configurations at :data:`SEED_BUDGETS`, spread over the range where adapters matter.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from coalora.errors import CoaloraError

if TYPE_CHECKING:
    from coalora.explorer import Explorer

#: Average bits of the allocator configurations that seed an empty front (2.5 bits, where the bare
#: model breaks, up to 7 bits, where it is nearly lossless).
SEED_BUDGETS: tuple[float, ...] = (2.5, 3.0, 3.5, 4.0, 5.0, 6.0, 7.0)


def grow_front(ex: Explorer, method: str = "coalora", rounds: int = 1, evaluate: int = 4, seqlen: int = 256,
               windows: int = 8, progress: bool = True, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Run ``rounds`` rounds of at most ``evaluate`` measurements each on ``ex``'s store; one row per round
    (round, evaluated, measured, hypervolume of the measured front), also stored as a search round."""
    from tqdm.auto import tqdm

    if ex.store.read_only:
        raise CoaloraError(ex.store.warning or "the results store is read-only")
    name = f"front-search:{ex.model_name}:{method}"
    rows = []
    for r in range(rounds):
        res = ex.front(method, None, seqlen, windows)
        if res.proposals:
            todo = [ex.config(p.config_hash) for p in res.proposals[:evaluate]]
        else:
            todo = [ex.allocate(b) for b in SEED_BUDGETS][: max(3, evaluate)]
        for c in tqdm(todo, desc=f"search round {r + 1}", unit="config", disable=not progress):
            ex.evaluate(c, method, seqlen, windows)
        after = ex.front(method, None, seqlen, windows)
        hv = after.hypervolume.get("measured", 0.0)
        ex.store.add_search_round(name, len(ex.store.search_rounds(name)), ex.model_name, -1, hv, "bits", None,
                                  len(after.measured), len(todo), after.seconds)
        rows.append({"round": r + 1, "evaluated": len(todo), "measured": len(after.measured), "hypervolume": hv})
        log(f"round {r + 1}: evaluated {len(todo)}, {len(after.measured)} measured, hypervolume {hv:.3f}")
    return rows
