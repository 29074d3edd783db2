"""The state-pass service: passes of one handler never overlap and never get lost, a
handler added without a first pass waits for its first kick, a hold turns every kick
until its release into one pass (made by the releasing thread), a due deadline makes
a pass, a finished handler is dropped, a pass that blocks holds up no other handler,
and the workers end when nothing is live."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from allocrunner.runner.state_passes import MAX_WORKERS, PassKick, StatePasses
from allocrunner.testing import assert_stays, wait_for


class Handler:
    """Thread-safe. A scripted handler: counts its passes, checks that they never
    overlap, and answers with the deadline and end it is told to."""

    def __init__(self, service: StatePasses, label: str = "h") -> None:
        self.kick = PassKick(service, label)
        self._mutex = threading.Lock()
        self.passes = 0
        self.overlaps = 0
        self._inside = False
        self.due: float | None = None
        self.finish_after: int | None = None
        self.gate: threading.Event | None = None
        self.entered = threading.Event()
        self.raise_on: int | None = None
        self.finished = threading.Event()
        self.pass_times: list[float] = []
        self.threads: list[str] = []  # the thread each pass ran on
        self.kick_on: int | None = None  # the pass that kicks its own handler

    def step(self) -> tuple[bool, float | None]:
        with self._mutex:
            if self._inside:
                self.overlaps += 1
            self._inside = True
            self.passes += 1
            n = self.passes
            self.pass_times.append(time.monotonic())
            self.threads.append(threading.current_thread().name)
        self.entered.set()
        try:
            if self.kick_on == n:
                self.kick.kick()
            if self.gate is not None:
                assert self.gate.wait(10)
            if self.raise_on == n:
                raise RuntimeError("pass failed")
            due = self.due
            if due is not None and due <= time.monotonic():
                due = self.due = None  # acted on, as a real handler's deadline is
            return (self.finish_after is not None and n >= self.finish_after), due
        finally:
            with self._mutex:
                self._inside = False

    def count(self) -> int:
        with self._mutex:
            return self.passes

    def last_pass(self) -> float:
        """When the last pass began (0 before the first)."""
        with self._mutex:
            return self.pass_times[-1] if self.pass_times else 0.0


@pytest.fixture
def service() -> StatePasses:
    return StatePasses()


def _ended(service: StatePasses) -> Callable[[], None]:
    def check() -> None:
        assert service.workers() == 0, service.workers()

    return check


def test_add_makes_a_first_pass_and_kicks_before_add_are_ignored(service: StatePasses) -> None:
    h = Handler(service)
    h.kick.kick()  # not live yet: nothing happens, and nothing breaks
    assert service.live() == 0
    h.finish_after = 2
    service.add(h.kick, h.step, h.finished.set)
    wait_for(lambda: _equal(h.count(), 1))
    h.kick.kick()
    assert h.finished.wait(10)
    assert h.count() == 2
    h.kick.kick()  # finished: dropped
    wait_for(_ended(service))
    assert h.count() == 2 and service.live() == 0
    assert service.join_if_idle(5)


def test_add_without_a_first_pass_leaves_it_to_the_first_kick(service: StatePasses) -> None:
    h = Handler(service)
    h.finish_after = 1
    service.add(h.kick, h.step, h.finished.set, first_pass=False)
    assert service.live() == 1
    assert_stays(lambda: _equal(h.count(), 0), 0.2)
    assert service.workers() == 0  # nothing queued: no worker was started for it
    h.kick.kick()
    assert h.finished.wait(10)
    assert h.count() == 1
    wait_for(_ended(service))
    assert service.live() == 0 and service.join_if_idle(5)


def test_calling_the_kick_is_a_kick(service: StatePasses) -> None:
    """A task runner is given the kick itself as its state-change callback."""
    h = Handler(service)
    h.finish_after = 1
    service.add(h.kick, h.step, h.finished.set, first_pass=False)
    assert_stays(lambda: _equal(h.count(), 0), 0.1)
    h.kick()
    assert h.finished.wait(10)
    assert h.count() == 1
    wait_for(_ended(service))
    assert service.join_if_idle(5)


def test_kicks_during_a_pass_coalesce_into_one_more_pass_never_overlapping(
    service: StatePasses,
) -> None:
    h = Handler(service)
    h.gate = threading.Event()
    service.add(h.kick, h.step, h.finished.set)
    assert h.entered.wait(10)
    for _ in range(50):
        h.kick.kick()
    h.gate.set()
    wait_for(lambda: _equal(h.count(), 2))
    h.finish_after = 3
    h.kick.kick()
    assert h.finished.wait(10)
    assert h.count() == 3 and h.overlaps == 0
    wait_for(_ended(service))


def test_many_handlers_kicked_from_many_threads_each_see_their_last_kick(
    service: StatePasses,
) -> None:
    handlers = [Handler(service, f"h{i}") for i in range(200)]
    for h in handlers:
        service.add(h.kick, h.step, h.finished.set)
    wait_for(lambda: _all(h.count() >= 1 for h in handlers))
    before = [h.count() for h in handlers]

    def kicker() -> None:
        for _ in range(20):
            for h in handlers:
                h.kick.kick()

    threads = [threading.Thread(target=kicker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Every handler makes at least one pass after the last kick.
    wait_for(lambda: _all(h.count() > b for h, b in zip(handlers, before, strict=True)))
    assert service.workers() <= MAX_WORKERS
    assert all(h.overlaps == 0 for h in handlers)
    for h in handlers:
        h.finish_after = 0
        h.kick.kick()
    assert all(h.finished.wait(10) for h in handlers)
    wait_for(_ended(service))


class Recorder:
    """Thread-safe. A handler whose pass reads what its kickers wrote before kicking."""

    def __init__(self, service: StatePasses, label: str) -> None:
        self.kick = PassKick(service, label)
        self._mutex = threading.Lock()
        self.written: dict[int, int] = {}  # kicker -> the last number it wrote
        self.seen: dict[int, int] = {}  # the same, as the last pass read it
        self.finish = False

    def write(self, kicker: int, number: int) -> None:
        with self._mutex:
            self.written = {**self.written, kicker: number}

    def step(self) -> tuple[bool, float | None]:
        with self._mutex:
            self.seen = self.written
            finish = self.finish
        # The rest of a pass's work takes a while: kicks land after its read.
        time.sleep(0.0002)
        return finish, None

    def caught_up(self) -> None:
        with self._mutex:
            assert self.seen == self.written, "a pass has still to read the last writes"


def test_the_pass_after_each_kick_reads_what_was_written_before_it(
    service: StatePasses,
) -> None:
    """A kick that finds a pass queued (or one running that will run again) returns at
    once, without the service's lock: that pass begins after the kick, so it must read
    every write made before it. Many threads write and kick a few handlers, so most
    kicks find a pass queued; once they are done, each handler's last pass has read
    every kicker's last write."""
    handlers = [Recorder(service, f"r{i}") for i in range(4)]
    for h in handlers:
        service.add(h.kick, h.step, lambda: None)

    def kicker(me: int) -> None:
        for number in range(2_000):
            h = handlers[number % len(handlers)]
            h.write(me, number)
            h.kick.kick()

    threads = [threading.Thread(target=kicker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for h in handlers:
        wait_for(h.caught_up)  # a kick lost on the way would leave it behind for good
        h.finish = True
        h.kick.kick()
    wait_for(_ended(service))


def test_kicks_during_a_hold_make_no_pass_and_its_release_makes_one(
    service: StatePasses,
) -> None:
    h = _held(service)
    for _ in range(20):
        h.kick.kick()
        h.kick()
    assert_stays(lambda: _equal(h.count(), 0), 0.2)
    assert service.workers() == 0  # nothing was queued: no worker was started
    h.kick.release()
    wait_for(lambda: _equal(h.count(), 1))
    assert_stays(lambda: _equal(h.count(), 1), 0.1)
    h.kick.kick()  # released: a kick makes a pass again
    wait_for(lambda: _equal(h.count(), 2))
    _finish_all(service, h)


def test_a_release_makes_a_pass_even_when_nothing_kicked(service: StatePasses) -> None:
    h = _held(service)
    h.kick.release()
    wait_for(lambda: _equal(h.count(), 1))
    _finish_all(service, h)


def test_a_release_makes_its_pass_on_the_releasing_thread_and_wakes_no_worker(
    service: StatePasses,
) -> None:
    h = _held(service)
    h.kick.kick()
    h.kick.release()
    assert h.count() == 1  # made before release returned
    assert h.threads == [threading.current_thread().name]
    assert service.workers() == 0
    h.kick.kick()  # the next pass is a worker's
    wait_for(lambda: _equal(h.count(), 2))
    assert h.threads[1].startswith("alloc-state-pool-")
    _finish_all(service, h)


def test_a_kick_during_a_release_pass_gets_a_worker_for_the_next_pass(
    service: StatePasses,
) -> None:
    h = _held(service)
    h.kick_on = 1
    h.kick.release()
    wait_for(lambda: _equal(h.count(), 2))
    assert h.threads[1].startswith("alloc-state-pool-")
    assert h.overlaps == 0
    _finish_all(service, h)


def test_a_deadline_a_release_pass_reports_is_kept_by_a_worker(service: StatePasses) -> None:
    """No worker runs when the release's pass reports a deadline: one is started to
    keep it."""
    h = _held(service)
    h.due = time.monotonic() + 0.2
    h.kick.release()
    assert h.count() == 1
    wait_for(lambda: _equal(h.count(), 2), timeout=5)  # at the deadline
    assert h.pass_times[1] >= h.pass_times[0] + 0.15
    assert h.due is None
    _finish_all(service, h)


def test_a_handler_that_is_not_idle_or_not_live_is_not_held(service: StatePasses) -> None:
    h = Handler(service)
    assert not h.kick.hold()  # not added yet
    with pytest.raises(ValueError, match="not held"):
        h.kick.release()
    h.gate = threading.Event()
    service.add(h.kick, h.step, h.finished.set)
    assert h.entered.wait(10)
    assert not h.kick.hold()  # its first pass is running
    h.gate.set()
    wait_for(lambda: _equal(h.count(), 1))
    wait_for(lambda: _all([h.kick.hold()]))  # idle once the pass is accounted for
    assert not h.kick.hold()  # already held
    h.kick.release()
    wait_for(lambda: _equal(h.count(), 2))
    _finish_all(service, h)
    assert not h.kick.hold()  # finished: no longer live


def test_a_deadline_due_during_a_hold_is_reported_again_by_the_release_pass(
    service: StatePasses,
) -> None:
    h = _passed_once_with_deadline(service, 0.5)
    assert h.kick.hold()  # the timer, armed by that pass, fires while it is held
    assert_stays(lambda: _equal(h.count(), 1), 0.8)
    h.kick.release()
    wait_for(lambda: _equal(h.count(), 2))  # the pass acts on the deadline that passed
    assert h.due is None
    _finish_all(service, h)


def test_a_due_deadline_makes_a_pass_and_a_withdrawn_one_does_not(
    service: StatePasses,
) -> None:
    h = _passed_once_with_deadline(service, 0.2)
    wait_for(lambda: _equal(h.count(), 2), timeout=5)  # at the deadline
    assert h.pass_times[1] >= h.pass_times[0] + 0.15
    # Deadline withdrawn by the next pass: its old entry is stale and fires nothing.
    h.due = time.monotonic() + 0.3
    h.kick.kick()
    wait_for(lambda: _equal(h.count(), 3))
    h.due = None
    h.kick.kick()
    wait_for(lambda: _equal(h.count(), 4))
    # Until well past the withdrawn deadline: no pass comes from it.
    assert_stays(lambda: _equal(h.count(), 4), 0.5)
    _finish_all(service, h)


def test_a_deadline_armed_while_another_worker_waits_is_kept(service: StatePasses) -> None:
    """A worker parked with no timeout learns of a deadline another worker arms."""
    slow = Handler(service, "slow")
    slow.gate = threading.Event()
    service.add(slow.kick, slow.step, slow.finished.set)
    assert slow.entered.wait(10)
    idle = Handler(service, "idle")
    service.add(idle.kick, idle.step, idle.finished.set)
    wait_for(lambda: _equal(idle.count(), 1))  # its worker now waits, with no timeout
    slow.due = time.monotonic() + 0.2
    slow.gate.set()  # its worker arms the deadline, finds nothing queued and ends
    wait_for(lambda: _equal(slow.count(), 2), timeout=5)
    _finish_all(service, slow, idle)


def test_a_deadline_behind_a_withdrawn_one_is_kept(service: StatePasses) -> None:
    """A withdrawn deadline leaves a stale timer entry; a later deadline armed by
    another worker still wakes the worker waiting with no timeout."""
    slow = Handler(service, "slow")
    slow.gate = threading.Event()
    service.add(slow.kick, slow.step, slow.finished.set)
    assert slow.entered.wait(10)
    other = Handler(service, "other")
    other.due = time.monotonic() + 0.5
    service.add(other.kick, other.step, other.finished.set)
    wait_for(lambda: _equal(other.count(), 1))
    other.due = None
    other.kick.kick()  # withdrawn: its entry stays in the heap, stale
    wait_for(lambda: _equal(other.count(), 2))
    slow.due = time.monotonic() + 1.0  # behind the stale entry
    slow.gate.set()
    wait_for(lambda: _equal(slow.count(), 2), timeout=5)
    assert slow.pass_times[1] >= slow.pass_times[0] + 0.5
    _finish_all(service, slow, other)


def test_one_worker_stays_parked_while_a_handler_is_live(service: StatePasses) -> None:
    h = Handler(service)
    service.add(h.kick, h.step, h.finished.set)
    wait_for(lambda: _equal(h.count(), 1))
    assert_stays(lambda: _equal(service.workers(), 1), 0.2)
    assert service.join_if_idle(0.01) is False  # live: not ours to wait for
    _finish_all(service, h)


def test_workers_a_burst_started_stay_parked_and_serve_the_next_bursts(
    service: StatePasses,
) -> None:
    """Three passes blocked at once need three workers; once they are over the workers
    park (a keeper and spares) rather than end while the handlers are live, so burst
    after burst runs on the same few threads: never more than `MAX_WORKERS` in all,
    where workers that ended after each burst would mean new threads for every one.
    Once the last handler finishes every worker ends."""
    handlers = [Handler(service, f"h{i}") for i in range(3)]
    threads: set[int] = set()

    def on_thread(h: Handler) -> Callable[[], tuple[bool, float | None]]:
        def step() -> tuple[bool, float | None]:
            threads.add(threading.get_ident())
            return h.step()

        return step

    for n in range(1, 7):
        for h in handlers:
            h.entered.clear()
            h.gate = threading.Event()
        for h in handlers:
            if n == 1:
                service.add(h.kick, on_thread(h), h.finished.set)
            else:
                h.kick.kick()
        for h in handlers:
            assert h.entered.wait(10)  # all three at once: one worker each
        for h in handlers:
            assert h.gate is not None
            h.gate.set()
        wait_for(lambda n=n: _all(h.count() == n for h in handlers))
        assert_stays(lambda: _parked(service, 3), 0.05)  # parked, none ended
    assert 3 <= len(threads) <= MAX_WORKERS, len(threads)
    assert service.join_if_idle(0.01) is False
    for h in handlers:
        h.gate = None
    _finish_all(service, *handlers)
    assert service.join_if_idle(5)


def test_a_blocked_pass_holds_up_no_other_handler(service: StatePasses) -> None:
    stuck = Handler(service, "stuck")
    stuck.gate = threading.Event()
    service.add(stuck.kick, stuck.step, stuck.finished.set)
    assert stuck.entered.wait(10)
    others = [Handler(service, f"o{i}") for i in range(20)]
    for h in others:
        h.finish_after = 1
        service.add(h.kick, h.step, h.finished.set)
    assert all(h.finished.wait(10) for h in others)
    stuck.finish_after = 1
    stuck.gate.set()
    assert stuck.finished.wait(10)
    wait_for(_ended(service))


def test_a_pass_that_raises_ends_its_handler_and_releases_its_waiters(
    service: StatePasses, caplog: pytest.LogCaptureFixture
) -> None:
    h = Handler(service, "boom")
    h.raise_on = 2
    service.add(h.kick, h.step, h.finished.set)
    wait_for(lambda: _equal(h.count(), 1))
    h.kick.kick()
    assert h.finished.wait(10)
    assert "state handler boom failed" in caplog.text
    wait_for(_ended(service))
    assert service.live() == 0


def test_adding_a_kick_twice_is_refused(service: StatePasses) -> None:
    h = Handler(service)
    h.finish_after = 1
    service.add(h.kick, h.step, h.finished.set)
    assert h.finished.wait(10)
    g = Handler(service)
    g.gate = threading.Event()
    service.add(g.kick, g.step, g.finished.set)
    with pytest.raises(ValueError, match="added twice"):
        service.add(g.kick, g.step, g.finished.set)
    g.finish_after = 1
    g.gate.set()
    assert g.finished.wait(10)
    wait_for(_ended(service))


def _held(service: StatePasses) -> Handler:
    """A live handler added without a first pass, its passes held."""
    h = Handler(service)
    service.add(h.kick, h.step, h.finished.set, first_pass=False)
    assert h.kick.hold()
    return h


def _passed_once_with_deadline(service: StatePasses, after: float) -> Handler:
    """A live handler whose first pass has run and reported a deadline `after` seconds
    from when it was added."""
    h = Handler(service)
    h.due = time.monotonic() + after
    service.add(h.kick, h.step, h.finished.set)
    wait_for(lambda: _equal(h.count(), 1))
    return h


def _finish_all(service: StatePasses, *handlers: Handler) -> None:
    """End each handler with one more pass, then wait for the workers to end."""
    for h in handlers:
        h.finish_after = 0
        h.kick.kick()
        assert h.finished.wait(10)
    wait_for(_ended(service))


def _parked(service: StatePasses, least: int) -> None:
    workers = service.workers()
    assert least <= workers <= MAX_WORKERS, workers


def _equal(got: int, want: int) -> None:
    assert got == want, f"{got} != {want}"


def _all(values: object) -> None:
    assert all(values), "not yet"  # type: ignore[call-overload]


@settings(max_examples=40, deadline=None)
@given(
    scripts=st.lists(
        st.lists(st.sampled_from(["kick", "due", "clear"]), min_size=1, max_size=12),
        min_size=1,
        max_size=6,
    )
)
def test_random_kicks_and_deadlines_from_many_threads(scripts: list[list[str]]) -> None:
    """Property: whatever each handler's kicker thread does (kicks, deadlines set
    and withdrawn), passes of one handler never overlap, the last kick and a kept
    deadline each get a pass after them, a finished handler gets no pass, and the
    workers end."""
    service = StatePasses()
    handlers = [Handler(service, f"h{i}") for i in range(len(scripts))]
    for h in handlers:
        service.add(h.kick, h.step, h.finished.set)

    last_kick = [0.0] * len(handlers)

    def kicker(i: int, h: Handler, script: list[str]) -> None:
        for action in script:
            if action == "due":
                h.due = time.monotonic() + 0.02
            elif action == "clear":
                h.due = None
            last_kick[i] = time.monotonic()
            h.kick.kick()

    threads = [
        threading.Thread(target=kicker, args=(i, h, script))
        for i, (h, script) in enumerate(zip(handlers, scripts, strict=True))
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # A pass begun after the last kick, and one after any deadline still kept.
    wait_for(lambda: _all(h.last_pass() >= k for h, k in zip(handlers, last_kick, strict=True)))
    wait_for(lambda: _all(h.due is None for h in handlers), timeout=5)
    for h in handlers:
        h.finish_after = 0
        h.kick.kick()
    assert all(h.finished.wait(10) for h in handlers)
    counts = [h.count() for h in handlers]
    for h in handlers:
        h.kick.kick()
    wait_for(_ended(service))
    assert [h.count() for h in handlers] == counts
    assert all(h.overlaps == 0 for h in handlers)
