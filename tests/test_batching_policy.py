"""The batch policies' arithmetic: Triton's fixed rules and the adaptive cost model."""

from __future__ import annotations

import pytest

from recserve.server.batching_policy import (
    AdaptivePolicy,
    ArrivalRate,
    FixedPolicy,
    LinearCostModel,
    make_policy,
)
from recserve.server.settings import BatchingSettings


def test_fixed_policy_waits_only_below_every_trigger() -> None:
    policy = FixedPolicy(
        BatchingSettings(max_batch_size=32, preferred_batch_sizes=[8, 16], max_queue_delay_microseconds=1000)
    )
    assert policy.wait_s(3, oldest_age_ns=200_000, in_flight=0) == pytest.approx(0.0008)
    assert policy.wait_s(3, oldest_age_ns=2_000_000, in_flight=0) < 0
    assert policy.wait_s(8, oldest_age_ns=0, in_flight=0) == 0
    assert (policy.batch_size(3), policy.batch_size(9), policy.batch_size(20), policy.batch_size(40)) == (
        3,
        8,
        16,
        32,
    )


def test_preferred_sizes_above_the_maximum_are_ignored() -> None:
    policy = FixedPolicy(BatchingSettings(max_batch_size=4, preferred_batch_sizes=[8]))
    assert policy.batch_size(6) == 4


def test_cost_model_recovers_fixed_and_per_row_cost() -> None:
    model = LinearCostModel()
    for size in [1, 2, 4, 8, 16, 32] * 5:
        model.observe(size, 0.002 + 0.0001 * size)
    fixed, per_row = model.coefficients()
    assert fixed == pytest.approx(0.002, rel=1e-6)
    assert per_row == pytest.approx(0.0001, rel=1e-6)
    assert model.predict(10) == pytest.approx(0.003)


def test_cost_model_with_one_size_treats_all_cost_as_fixed() -> None:
    model = LinearCostModel()
    model.observe(1, 0.001)
    assert model.coefficients() == (pytest.approx(0.001), 0.0)


def test_arrival_rate_tracks_the_gap() -> None:
    rate = ArrivalRate(weight=0.5)
    assert rate.mean_gap_s == float("inf")
    for n in range(10):
        rate.observe(n * 1_000_000)
    assert rate.mean_gap_s == pytest.approx(0.001)


def adaptive(target_us: int = 10_000) -> AdaptivePolicy:
    settings = BatchingSettings(
        max_batch_size=256, adaptive={"enabled": True, "latency_target_us": target_us}
    )
    policy = AdaptivePolicy(settings)
    for size in (1, 64, 1, 64):
        policy.on_batch(size, int((0.001 + 0.00005 * size) * 1e9))  # 1 ms fixed + 50 us per row
    return policy


def arrive_every(policy: AdaptivePolicy, gap_ns: int, count: int = 20) -> None:
    for n in range(count):
        policy.on_arrival(n * gap_ns)


def test_adaptive_goes_at_once_when_nothing_is_executing() -> None:
    policy = adaptive()
    arrive_every(policy, 100_000)
    assert policy.wait_s(1, oldest_age_ns=0, in_flight=0) == 0


def test_adaptive_waits_for_the_batch_that_forms_during_one_compute_when_busy() -> None:
    policy = adaptive()
    arrive_every(policy, 100_000)  # one every 0.1 ms: ~10 arrive during a 1 ms batch
    assert policy.expected_batch(4) == pytest.approx(12.0)
    assert policy.wait_s(4, oldest_age_ns=0, in_flight=1) == pytest.approx(0.0001)
    assert policy.wait_s(20, oldest_age_ns=0, in_flight=1) == 0  # 20 arrive during a batch of 20


def test_adaptive_never_waits_past_the_latency_target() -> None:
    policy = adaptive(target_us=10_000)
    arrive_every(policy, 100_000)
    assert policy.wait_s(4, oldest_age_ns=9_500_000, in_flight=1) <= 0


def test_adaptive_takes_everything_queued_up_to_the_maximum() -> None:
    policy = adaptive()
    assert (policy.batch_size(3), policy.batch_size(100), policy.batch_size(1000)) == (3, 100, 256)


def test_a_batch_is_complete_when_full_or_of_a_preferred_size() -> None:
    fixed = make_policy(BatchingSettings(max_batch_size=8, preferred_batch_sizes=[4]))
    assert [fixed.is_complete(n) for n in (3, 4, 7, 8)] == [False, True, True, True]
    plain = make_policy(BatchingSettings(max_batch_size=8))
    assert [plain.is_complete(n) for n in (7, 8)] == [False, True]
    adaptive = make_policy(BatchingSettings(max_batch_size=8, adaptive={"enabled": True}))
    assert [adaptive.is_complete(n) for n in (4, 8)] == [False, True]
