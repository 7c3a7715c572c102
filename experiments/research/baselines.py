"""Baseline seeds: runs of the unchanged genome that give the arena its noise, and
health checks of this machine.

The node runs baseline seeds itself while the arena has fewer than `baseline_repeats`,
and adds one every `sigma_refresh` experiments so the noise estimate keeps improving.
Announces never block a baseline (swarm.announces): a seed a peer who earned our trust
runs now counts as coming, and a seed anyone else announces only goes after the others.
A health check is a baseline at a fresh seed: the machine shows it can still train, and
a check that passes refines the noise estimate too.

A mixin of `ResearchLoop` (loop.py): it reads the loop's `store`, `scores`, `config`,
`state`, `root_id` and its `busy` and `firm_busy` hints, and runs a baseline through the
loop's `_run_baseline`.
"""
from __future__ import annotations

from experiments.research.runs import StepOutcome
from swarm.announces import seeds_of


class Baselines:
    def _seeds_run_elsewhere(self, hinted: bool = False) -> set[int]:
        """Baseline seeds peers who earned our trust announce they are running now (these
        may defer our run of a seed); with `hinted`, the seeds of every announce we honour
        (swarm.announces: strangers' included), which only reorder our baselines."""
        pairs = self.firm_busy() | (self.busy() if hinted else set())
        return seeds_of(pairs, self.root_id)

    def _missing_baseline_seed(self) -> int | None:
        """A baseline seed the arena still needs. Announces never block one: a seed a peer
        who earned our trust runs now counts as coming (a swarm splits the seeds), and a
        seed anyone else announces only goes after the other seeds we need anyway; when
        it is the last one we need, we run it ourselves."""
        c, rules = self.config, self.config.rules
        taken = self._taken_seeds()
        hinted = self._seeds_run_elsewhere(hinted=True)
        need = rules.baseline_repeats - len(taken)
        if rules.seed not in taken:
            if rules.seed in hinted and need > 1:
                return self._free_seed(taken | {rules.seed}, avoid=hinted)
            return rules.seed
        if need > 0:
            return self._free_seed(taken, avoid=hinted)
        local = self.store.local_experiment_count(self.arena)
        if c.sigma_refresh and local and local % c.sigma_refresh == 0 and \
                self.state.experiments_run:
            return self._free_seed(taken, avoid=hinted)
        return None

    async def _health_check(self) -> StepOutcome:
        """A baseline of the unmodified genome at a fresh seed: can this machine train?"""
        return await self._run_baseline(self._free_seed())

    def _taken_seeds(self) -> set[int]:
        return set(self.scores.baselines()) | self._seeds_run_elsewhere()

    def _free_seed(self, taken: set[int] | None = None, avoid: set[int] = frozenset()
                   ) -> int:
        """The first baseline seed nobody ran or runs (and, if possible, not in `avoid`):
        a health check that passes also refines the noise estimate. Never fails: the
        sets are finite, however many keys announce seeds."""
        taken = self._taken_seeds() if taken is None else taken
        seed = self.config.rules.seed
        while seed in taken or seed in avoid:
            seed += 1
        return seed
