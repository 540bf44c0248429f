"""The hostile-client harness: its pure parts, and one fixed seed against a real bridge.

The seeded run (``python -m bench.hostile --seed 6 --seconds 55``) starts its own
redis-server and bridge, attacks it for 55 s with about 300 misbehaving sockets,
and each invariant of ARCHITECTURE.md's "Bounded memory" and PROTOCOL.md's
access rules is its own test here, failing with the figure it measured. More
seeds are run outside CI (docs/SECURITY.md, "The hostile-client harness").
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from bench.hostile_checks import (
    MIB,
    RSS_SLACK_BYTES,
    CanaryLedger,
    Figures,
    verdicts,
)
from bench.hostile_plan import Kind, make_plan

ROOT = Path(__file__).resolve().parent.parent
CI_SEED = 6
CI_SECONDS = 55
INVARIANTS = [
    "bounded memory",
    "/healthz answers",
    "canary served",
    "canary lost nothing",
    "no cross-origin read",
    "no read with a bad token",
    "frames within limits",
    "pipelined HTTP answered",
    "producer never raised",
    "bridge alive",
]

# -- the pure parts ---------------------------------------------------------------------


def test_a_seed_always_gives_the_same_plan() -> None:
    assert make_plan(11, 60) == make_plan(11, 60)
    assert make_plan(11, 60) != make_plan(12, 60)


@pytest.mark.parametrize("seed", range(20))
def test_every_plan_tries_every_kind_within_the_run(seed: int) -> None:
    plan = make_plan(seed, 50, 300)
    kinds = set(plan.kinds())
    expected = {kind.value for kind in Kind}
    if not plan.keyed:
        expected.discard(Kind.TOKEN_ABUSE.value)
    assert kinds == expected
    assert plan.connections >= 300
    for action in plan.actions:
        assert action.start >= 0 and action.end <= 50 + 1e-9, action
        assert 0 <= action.source < plan.sources


def test_seeds_choose_both_bridges() -> None:
    assert {make_plan(seed, 30).keyed for seed in range(10)} == {True, False}


def test_the_connection_budget_scales_the_plan() -> None:
    small, large = make_plan(3, 30, 60), make_plan(3, 30, 900)
    assert small.connections < large.connections


def test_ledger_counts_gaps_duplicates_and_late_events() -> None:
    ledger = CanaryLedger("op")
    for seq in range(1, 6):
        ledger.store(seq, float(seq))
    ledger.receive(1, 1.1)
    ledger.receive(2, 2.5)  # 0.5 s late: served
    ledger.receive(4, 5.5)  # 3 skipped, and 1.5 s late
    ledger.receive(4, 5.6)  # a duplicate
    assert ledger.served_share(on_time=1.0) == pytest.approx(2 / 5)
    assert ledger.lost(last_seq=5) == 2  # seq 3 (a gap) and seq 5 (never came)
    assert ledger.tracker.duplicates == 1
    assert ledger.last_received == 4


def clean_figures() -> Figures:
    return Figures(
        rss_baseline=60 * MIB, rss_peak=100 * MIB, buffered_budget=64 * MIB, probes=500,
        probes_answered=500, canary_events=1000, canary_served=1.0, canary_lost=0,
        canary_duplicates=0, canary_unrecovered=0, canary_max_frame=300, frame_limit=65536,
        cross_origin_attempts=40, cross_origin_reads=[], bad_token_attempts=20,
        bad_token_reads=[], pipelined_writes=10, pipelined_answered=10, producer_errors=[],
        alive=True,
    )


def test_clean_figures_pass_every_invariant() -> None:
    results = verdicts(clean_figures())
    assert [v.name for v in results] == INVARIANTS
    assert all(v.passed for v in results), [v.line() for v in results]


@pytest.mark.parametrize(
    ("change", "failing"),
    [
        ({"rss_peak": 60 * MIB + 64 * MIB + RSS_SLACK_BYTES + 1}, "bounded memory"),
        ({"probes_answered": 494}, "/healthz answers"),
        ({"probes": 0, "probes_answered": 0}, "/healthz answers"),
        ({"canary_served": 0.98}, "canary served"),
        ({"canary_lost": 1}, "canary lost nothing"),
        ({"canary_unrecovered": 1}, "canary lost nothing"),
        ({"cross_origin_reads": ["foreign-origin ws -> 101"]}, "no cross-origin read"),
        ({"bad_token_reads": ["forged token sse -> 200"]}, "no read with a bad token"),
        ({"canary_max_frame": 65537}, "frames within limits"),
        ({"pipelined_answered": 9}, "pipelined HTTP answered"),
        ({"pipelined_writes": 0, "pipelined_answered": 0}, "pipelined HTTP answered"),
        ({"producer_errors": ["status: AttributeError"]}, "producer never raised"),
        ({"alive": False}, "bridge alive"),
    ],
)
def test_each_invariant_fails_on_its_own_figure(change: dict, failing: str) -> None:
    results = verdicts(replace(clean_figures(), **change))
    assert [v.name for v in results if not v.passed] == [failing]
    assert failing in next(v.line() for v in results if v.name == failing)


# -- one fixed seed against a real bridge ------------------------------------------------


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("hostile") / "hostile.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.hostile", "--seed", str(CI_SEED),
         "--seconds", str(CI_SECONDS), "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=CI_SECONDS + 60,
    )
    assert out.exists(), done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.timeout(CI_SECONDS + 90)
@pytest.mark.parametrize("invariant", INVARIANTS)
def test_hostile_clients_break_no_invariant(hostile_run: dict, invariant: str) -> None:
    verdict = next(v for v in hostile_run["verdicts"] if v["name"] == invariant)
    assert verdict["passed"], (
        f"seed {CI_SEED}: invariant '{invariant}' broken: {verdict['figure']} "
        f"(limit {verdict['limit']}); replay with python3 -m bench.hostile --seed {CI_SEED} "
        f"--seconds {CI_SECONDS}"
    )


@pytest.mark.timeout(CI_SECONDS + 90)
def test_the_harness_ran_what_it_planned(hostile_run: dict) -> None:
    assert not hostile_run["outcomes"].get("harness errors"), hostile_run["outcomes"]
    assert hostile_run["figures"]["canary_events"] > 0
