"""The sync path's flat combiner, without Redis: who sends, who waits, who gets which answer."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ratelimit._core.plan import Plan
from ratelimit.backends.base import BackendError, RawResult
from ratelimit.backends.redis._combiner import Combiner


class _FakeRedis:
    """A ``send`` that answers each plan with its own tag after ``delay``, failing calls on request."""

    def __init__(self, delay: float = 0.002, fail_every: int = 0) -> None:
        self.delay = delay
        self.fail_every = fail_every
        self.calls: list[list[Any]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()

    def __call__(self, plans: Sequence[Plan]) -> list[RawResult | BackendError]:
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.calls.append(list(plans))
            number = len(self.calls)
        time.sleep(self.delay)
        with self._lock:
            self.in_flight -= 1
        if self.fail_every and number % self.fail_every == 0:
            raise BackendError(f"call {number} failed")
        return [(True, (0,), (cast(Any, p), 0)) for p in plans]


def _run(combiner: Combiner, threads: int, per_thread: int) -> dict[Any, Any]:
    answers: dict[Any, Any] = {}
    lock = threading.Lock()
    barrier = threading.Barrier(threads)

    def work(i: int) -> None:
        barrier.wait()
        for j in range(per_thread):
            tag = (i, j)
            try:
                got: Any = combiner.submit(cast(Plan, tag))[2][0]
            except BackendError as exc:
                got = exc
            with lock:
                answers[tag] = got

    pool = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in pool), "a thread hung"
    return answers


@settings(max_examples=20, deadline=None)
@given(threads=st.integers(1, 12), per_thread=st.integers(1, 15), fail_every=st.sampled_from([0, 2, 3]))
def test_every_plan_sent_once_and_answered_to_its_thread(
    threads: int, per_thread: int, fail_every: int
) -> None:
    """Each plan goes out in exactly one call, one call at a time, and its thread gets its answer."""
    fake = _FakeRedis(fail_every=fail_every)
    answers = _run(Combiner(fake, "fake", patience=10), threads, per_thread)
    sent = [p for call in fake.calls for p in call]
    assert sorted(sent) == sorted(answers)  # every plan once
    assert fake.max_in_flight == 1
    failed_plans = {
        p for n, call in enumerate(fake.calls, 1) if fail_every and n % fail_every == 0 for p in call
    }
    for tag, got in answers.items():
        if tag in failed_plans:
            assert isinstance(got, BackendError)
        else:
            assert got == tag


def test_checks_arriving_during_a_call_share_the_next() -> None:
    """While one slow call is in flight, the other threads' checks queue and go out together."""
    fake = _FakeRedis(delay=0.05)
    _run(Combiner(fake, "fake", patience=10), threads=8, per_thread=1)
    assert len(fake.calls) < 8
    assert max(len(c) for c in fake.calls) > 1


def test_a_stuck_call_lets_queued_checks_give_up_after_patience() -> None:
    """A call that never returns (only a bug could make one): queued threads time out, unsent."""
    release = threading.Event()
    sent: list[Any] = []

    def stuck(plans: Sequence[Plan]) -> list[RawResult | BackendError]:
        sent.extend(plans)
        release.wait(10)
        return [(True, (0,), (0, 0)) for _ in plans]

    combiner = Combiner(stuck, "fake", patience=0.1)
    leader = threading.Thread(target=combiner.submit, args=(cast(Plan, "leader"),), daemon=True)
    leader.start()
    while not sent:
        time.sleep(0.001)
    start = time.perf_counter()
    with pytest.raises(BackendError, match="took this check"):
        combiner.submit(cast(Plan, "queued"))
    assert 0.1 <= time.perf_counter() - start < 1.0
    release.set()
    leader.join(5)
    assert sent == ["leader"]
    combiner.submit(cast(Plan, "later"))  # the combiner works on
    assert sent == ["leader", "later"]
