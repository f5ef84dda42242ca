"""The adaptive limit (asyncpool._autosize) against simulated servers, and fair_share.

Every test is deterministic: a server model turns a concurrency into a hold time, a
seeded RNG adds jitter, and the simulated clock advances 0.5 s per update (the pool's
maintenance cadence). No asyncio, no PostgreSQL.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable

import pytest

from asyncpool._autosize import AdaptiveLimit, LimitDecision
from asyncpool._sizer import fair_share

Model = Callable[[int], float]
"""Hold time (seconds) of a lease when ``n`` leases run at once."""

INTERVAL = 0.5


def cpu_bound(cores: int, service: float = 0.003) -> Model:
    """A CPU-bound server: ``cores`` queries at full speed, the rest share the CPU."""
    return lambda n: service * max(1.0, n / cores)


def io_bound(service: float = 0.005, knee: int = 200) -> Model:
    """An I/O-bound server (pg_sleep): flat latency up to a large concurrency."""
    return lambda n: service * max(1.0, n / knee)


@dataclasses.dataclass
class Sim:
    """A closed loop of ``borrowers`` against a model, driving one AdaptiveLimit."""

    algo: AdaptiveLimit
    model: Model
    borrowers: int = 100
    jitter: float = 0.1
    #: Whole-window slowdown (a busy machine): each window's latencies are multiplied
    #: by a factor drawn from 1..1+window_noise.
    window_noise: float = 0.0
    seed: int = 1
    now: float = 0.0
    budget: int | None = None

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def step(self) -> LimitDecision:
        """One maintenance interval: the samples it completes, then an update."""
        inflight = min(self.algo.limit, self.borrowers)
        latency = self.model(inflight) * (1.0 + self.rng.uniform(0.0, self.window_noise))
        start = self.now
        n = int(inflight * INTERVAL / latency)
        for i in range(n):
            rtt = latency * (1.0 + self.rng.uniform(-self.jitter, self.jitter))
            # Completions spread over the window, each started inside it.
            done = start + rtt + (INTERVAL - rtt) * i / max(n, 1)
            self.algo.on_sample(done, rtt, inflight)
        self.now = start + INTERVAL
        return self.algo.update(self.now, self.budget)

    def run(self, updates: int) -> list[LimitDecision]:
        return [self.step() for _ in range(updates)]

    def throughput(self, limit: int) -> float:
        n = min(limit, self.borrowers)
        return n / self.model(n)


EXCURSIONS = ("probe: measuring baseline", "explore: more")


def steady(decisions: list[LimitDecision]) -> list[int]:
    """The limits outside the deliberate one-window excursions (probes, explores)."""
    return [d.limit for d in decisions if d.reason not in EXCURSIONS]


# ---------------------------------------------------------------------- convergence


@pytest.mark.parametrize(
    ("name", "model", "initial", "low", "high"),
    [
        ("2 cores from 1", cpu_bound(2), 1, 2, 4),
        ("2 cores from 40", cpu_bound(2), 40, 2, 4),
        ("2 cores, 20 ms queries", cpu_bound(2, 0.02), 1, 2, 4),
        ("4 cores from 1", cpu_bound(4), 1, 4, 7),
        ("8 cores from 1", cpu_bound(8), 1, 8, 12),
        ("8 cores from 40", cpu_bound(8), 40, 8, 12),
        ("I/O-bound from 1", io_bound(), 1, 40, 40),
        ("I/O-bound, knee at 16", io_bound(knee=16), 1, 16, 22),
        # Latency rises with throughput (a busy client), but more still gains:
        # 5 ms at 1, 8 ms at 40, so 40 gives 1.6x the throughput of 20.
        ("I/O-bound, busy client", lambda n: 0.005 + 0.000075 * n, 1, 30, 40),
    ],
)
def test_converges_near_the_knee(
    name: str, model: Model, initial: int, low: int, high: int
) -> None:
    sim = Sim(AdaptiveLimit(min_limit=1, max_limit=40, initial=initial), model)
    sim.run(30)  # 15 s
    tail = steady(sim.run(60))  # the next 30 s, probes excluded
    assert low <= min(tail) and max(tail) <= high, (name, tail)
    best = max(sim.throughput(n) for n in range(1, 41))
    mean_limit = round(sum(tail) / len(tail))
    assert sim.throughput(mean_limit) >= 0.95 * best, (name, mean_limit)


def test_excursions_are_single_windows() -> None:
    sim = Sim(AdaptiveLimit(max_limit=40), cpu_bound(2))
    sim.run(20)
    decisions = sim.run(120)
    explores = [i for i, d in enumerate(decisions) if d.reason == "explore: more"]
    assert 4 <= len(explores) <= 13  # about one every 5 s of holding still
    for i in explores:
        assert decisions[i].limit == decisions[i].previous + max(1, decisions[i].previous // 4)
        assert decisions[i + 1].reason == "shrink: no gain"  # nothing gained: back
        assert decisions[i + 1].limit == decisions[i].previous
    # Counting the excursions too, the mean stays near the knee.
    mean = sum(d.limit for d in decisions) / len(decisions)
    assert 2.0 <= mean <= 4.5, mean


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("jitter", [0.0, 0.1, 0.3])
def test_steady_state_is_stable(seed: int, jitter: float) -> None:
    sim = Sim(AdaptiveLimit(max_limit=40), cpu_bound(2), jitter=jitter, seed=seed)
    sim.run(30)
    decisions = sim.run(120)  # 60 s of steady state
    tail = steady(decisions)
    assert max(tail) - min(tail) <= 2, tail
    moves = sum(1 for d in decisions if d.moved and not d.reason.startswith("probe"))
    assert moves <= 30, moves  # at most one move every two seconds on average


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(
    ("model", "mean_low", "mean_high", "p10_low", "top"),
    [
        (cpu_bound(2), 2, 5, 2, 6),
        # Noise passes for a gain now and then: the limit climbs a step, and the next
        # probe brings it back (more connections for a while, the same throughput).
        (cpu_bound(8), 8, 13, 8, 17),
        (io_bound(), 36, 40, 30, 40),
    ],
)
def test_busy_machine(
    seed: int, model: Model, mean_low: int, mean_high: int, p10_low: int, top: int
) -> None:
    # Every window up to 15 % slower at random (other processes on the machine): the
    # mean stays near the knee; a slow window can make a high limit shrink once (and
    # come back the next window, the shrink having lost throughput).
    sim = Sim(AdaptiveLimit(max_limit=40), model, window_noise=0.15, seed=seed)
    sim.run(30)
    tail = steady(sim.run(120))
    mean = sum(tail) / len(tail)
    assert mean_low <= mean <= mean_high, (mean, tail)
    ordered = sorted(tail)
    assert ordered[len(ordered) // 10] >= p10_low and ordered[-1] <= top, tail


def test_one_slow_window_is_not_a_new_workload() -> None:
    sim = Sim(AdaptiveLimit(max_limit=40), cpu_bound(2))
    sim.run(30)
    fast = sim.model
    sim.model = lambda n: 2.0 * fast(n)  # one window twice as slow (a noisy neighbour)
    sim.step()
    sim.model = fast
    decisions = sim.run(20)
    assert all(2 <= d.limit <= 5 for d in decisions[4:]), [d.limit for d in decisions]
    baseline = sim.algo.stats().baseline_rtt
    assert baseline == pytest.approx(0.003, rel=0.15)


@pytest.mark.parametrize(("model", "longest"), [(cpu_bound(2), 2), (io_bound(), 1)])
def test_probes_are_rare_and_short(model: Model, longest: int) -> None:
    sim = Sim(AdaptiveLimit(max_limit=40, probe_interval=10.0), model)
    sim.run(20)
    decisions = sim.run(120)  # 60 s
    episodes: list[list[LimitDecision]] = []
    for before, d in zip([None, *decisions], decisions, strict=False):
        if d.reason == "probe: measuring baseline":
            if before is None or before.reason != "probe: measuring baseline":
                episodes.append([])
            episodes[-1].append(d)
    assert 1 <= len(episodes) <= 6
    for episode in episodes:
        # Halving while the throughput holds; the first window that loses it ends it.
        assert len(episode) <= longest
        assert episode[0].limit == (episode[0].previous + 1) // 2
        after = decisions[decisions.index(episode[-1]) + 1]
        assert after.reason == "probe: done"
        assert after.limit >= episode[-1].limit


# ---------------------------------------------------------------------- reaction


@pytest.mark.parametrize(
    ("name", "before", "after", "low", "high", "within"),
    [
        # Holding still in the band for 5 s, then one more connection shows the gain.
        ("CPU to I/O: grows", cpu_bound(2), io_bound(), 30, 40, 22),
        ("I/O to CPU: shrinks", io_bound(), cpu_bound(2), 2, 5, 8),
        ("2 to 8 cores: grows", cpu_bound(2), cpu_bound(8), 8, 12, 12),
        ("8 to 2 cores: shrinks", cpu_bound(8), cpu_bound(2), 2, 5, 8),
        # Slower queries on the same server: the baseline goes stale; the probe fixes it.
        ("queries 3x slower", cpu_bound(2), cpu_bound(2, 0.009), 2, 5, 30),
        ("queries 3x faster", cpu_bound(2, 0.009), cpu_bound(2), 2, 5, 8),
    ],
)
def test_reacts_to_a_workload_change(
    name: str, before: Model, after: Model, low: int, high: int, within: int
) -> None:
    sim = Sim(AdaptiveLimit(max_limit=40), before)
    sim.run(40)
    sim.model = after
    decisions = sim.run(within + 40)
    reached = next((i for i, d in enumerate(decisions) if low <= d.limit <= high), None)
    assert reached is not None and reached < within, (name, [d.limit for d in decisions])
    tail = steady(decisions[within + 10 :])
    assert low <= min(tail) and max(tail) <= high, (name, tail)


# ---------------------------------------------------------------------- bounds


@pytest.mark.parametrize(
    ("kwargs", "model", "budget", "expected", "reason"),
    [
        ({"min_limit": 1, "max_limit": 40}, cpu_bound(2), 2, 2, "cap: budget"),
        ({"max_limit": 3}, io_bound(), None, 3, "cap: max_size"),
        ({"max_limit": 40}, io_bound(), 7, 7, "cap: budget"),
        ({"min_limit": 5, "max_limit": 40}, io_bound(), 2, 2, "cap: budget"),
        ({"max_limit": 40}, io_bound(), 0, 1, "cap: budget"),
    ],
)
def test_bounds(
    kwargs: dict[str, int], model: Model, budget: int | None, expected: int, reason: str
) -> None:
    sim = Sim(AdaptiveLimit(**kwargs), model, budget=budget)
    decisions = sim.run(40)
    assert all(d.limit <= (kwargs["max_limit"]) for d in decisions)
    if budget is not None:
        assert all(d.limit <= max(budget, 1) for d in decisions)
    assert decisions[-1].limit == expected
    assert decisions[-1].reason == reason


def test_min_size_above_the_knee() -> None:
    # The floor hides the no-load hold time (the server queues at every allowed
    # limit), so the baseline is measured at the floor: the limit stays near it.
    sim = Sim(AdaptiveLimit(min_limit=6, max_limit=40), cpu_bound(2))
    decisions = sim.run(60)
    assert all(d.limit >= 6 for d in decisions)
    assert all(limit <= 10 for limit in steady(decisions[20:])), [d.limit for d in decisions]


def test_budget_lowered_then_lifted() -> None:
    sim = Sim(AdaptiveLimit(max_limit=40), io_bound())
    sim.run(20)
    assert sim.algo.limit == 40
    sim.budget = 10
    assert sim.step() == LimitDecision(limit=10, reason="cap: budget", previous=40)
    sim.budget = None
    decisions = sim.run(12)
    assert decisions[-1].limit == 40


def test_no_explore_at_the_cap_or_when_the_budget_cut_it() -> None:
    sim = Sim(AdaptiveLimit(max_limit=4), cpu_bound(2))
    decisions = sim.run(60)
    assert all(d.reason != "explore: more" for d in decisions[10:])
    # An explore that the budget cut short is not judged as one.
    sim = Sim(AdaptiveLimit(max_limit=40), cpu_bound(2))
    sim.run(30)
    while sim.step().reason != "explore: more":
        pass
    baseline = sim.algo.stats().baseline_rtt
    sim.budget = 2
    assert sim.step().reason == "cap: budget"
    assert sim.algo.stats().baseline_rtt == baseline


def test_no_growth_without_demand() -> None:
    # Three borrowers: a pool of 40 would learn nothing, so the limit stays near 3.
    sim = Sim(AdaptiveLimit(max_limit=40), io_bound(), borrowers=3)
    decisions = sim.run(40)
    assert max(d.limit for d in decisions) <= 4
    assert decisions[-1].reason == "hold: demand below limit"


def test_few_samples_hold_and_keep_the_window() -> None:
    algo = AdaptiveLimit(min_limit=2, max_limit=10, min_samples=5)
    for i in range(3):
        algo.on_sample(0.1 * (i + 1), 0.05, 2)
    assert algo.update(0.5) == LimitDecision(limit=2, reason="hold: few samples", previous=2)
    for i in range(2):
        algo.on_sample(0.6 + 0.1 * i, 0.05, 2)
    decision = algo.update(1.0)
    assert decision.reason == "grow: latency flat"
    assert decision.limit == 3
    assert algo.stats().window_rtt == pytest.approx(0.05)


def test_samples_from_before_a_change_are_ignored() -> None:
    algo = AdaptiveLimit(min_limit=2, max_limit=10, min_samples=1)
    algo.on_sample(0.4, 0.1, 2)
    assert algo.update(0.5).limit == 3  # moved at t=0.5
    algo.on_sample(0.6, 0.2, 3)  # started at 0.4: measured the old limit
    stats = algo.stats()
    assert stats.samples_stale == 1 and stats.samples_total == 2
    assert algo.update(1.0).reason == "hold: few samples"


def test_stats_and_repr() -> None:
    sim = Sim(AdaptiveLimit(max_limit=40), cpu_bound(2))
    sim.run(10)
    stats = sim.algo.stats()
    assert stats.limit == sim.algo.limit
    assert stats.baseline_rtt == pytest.approx(0.003, rel=0.15)
    assert stats.updates == 10
    assert stats.queue is not None
    assert "AdaptiveLimit limit=" in repr(sim.algo)
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.limit = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_limit": 0},
        {"max_limit": 4, "min_limit": 5},
        {"max_limit": 4, "min_limit": -1},
        {"max_limit": 4, "min_samples": 0},
        {"max_limit": 4, "probe_interval": 0.0},
    ],
)
def test_invalid_arguments(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        AdaptiveLimit(**kwargs)


def test_initial_is_clamped() -> None:
    assert AdaptiveLimit(min_limit=3, max_limit=5, initial=1).limit == 3
    assert AdaptiveLimit(min_limit=3, max_limit=5, initial=9).limit == 5
    assert AdaptiveLimit(min_limit=0, max_limit=5).limit == 1


# ---------------------------------------------------------------------- fair share


@pytest.mark.parametrize(
    ("max_connections", "superuser", "reserve", "instances", "others", "expected"),
    [
        (50, 3, 0, 1, 0, 47),  # alone: everything ordinary roles may hold
        (50, 3, 3, 4, 0, 11),  # 44 // 4
        (50, 3, 3, 4, 33, 11),  # the other three at their share: 44 - 33 = 11 left
        (50, 3, 3, 4, 40, 4),  # others hold more (a deploy, a cron job): only what is free
        (50, 3, 3, 4, 44, 0),  # nothing free
        (50, 3, 3, 4, 60, 0),  # over-subscribed already: never negative
        (100, 3, 10, 3, 0, 29),  # 87 // 3, the remainder is left unused
        (5, 3, 3, 2, 0, 0),  # no capacity at all
    ],
)
def test_fair_share(
    max_connections: int, superuser: int, reserve: int, instances: int, others: int, expected: int
) -> None:
    assert fair_share(max_connections, superuser, reserve, instances, others) == expected


def test_fair_share_sum_stays_under_capacity() -> None:
    # Four instances that each take their whole share in turn, starting from any state.
    for start in ([0, 0, 0, 0], [40, 0, 0, 0], [20, 20, 0, 0], [5, 30, 9, 0]):
        held = list(start)
        for _ in range(20):
            for i in range(4):
                others = sum(held) - held[i]
                held[i] = fair_share(50, 3, 3, 4, others)  # shrink or grow to the budget
                assert sum(held) <= max(44, sum(start))
        assert held == [11, 11, 11, 11], (start, held)


def test_fair_share_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="instances"):
        fair_share(50, 3, 0, 0, 0)
    with pytest.raises(ValueError, match="reserve"):
        fair_share(50, 3, -1, 1, 0)
