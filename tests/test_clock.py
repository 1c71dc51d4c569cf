import threading
import time

import pytest

from mailtether import SYSTEM_CLOCK, Clock, SystemClock
from mailtether.testing import FakeClock


def test_both_clocks_satisfy_the_protocol():
    assert isinstance(SYSTEM_CLOCK, Clock)
    assert isinstance(FakeClock(), Clock)


def test_system_clock_reads_real_time():
    assert abs(SystemClock().time() - time.time()) < 1.0
    first = SYSTEM_CLOCK.monotonic()
    assert SYSTEM_CLOCK.monotonic() >= first


def test_zero_delay_never_sleeps(monkeypatch):
    calls = []
    monkeypatch.setattr(time, "sleep", calls.append)
    assert SystemClock().sleep(0) is False
    assert SystemClock().sleep(-1) is False
    assert calls == []


def test_system_sleep_is_interrupted_by_the_stop_event():
    stop = threading.Event()
    threading.Timer(0.05, stop.set).start()
    started = time.monotonic()
    assert SystemClock().sleep(30, stop) is True
    assert time.monotonic() - started < 5


def test_system_sleep_with_a_set_event_returns_at_once():
    stop = threading.Event()
    stop.set()
    assert SystemClock().sleep(30, stop) is True


def test_system_sleep_refuses_nan():
    with pytest.raises(ValueError, match="NaN"):
        SystemClock().sleep(float("nan"))
    with pytest.raises(TypeError):
        SystemClock().sleep("1")  # type: ignore[arg-type]


def test_fake_clock_advances_instantly_and_records():
    clock = FakeClock(monotonic=10.0, wall=1_000.0)
    started = time.monotonic()
    assert clock.sleep(3600) is False
    assert time.monotonic() - started < 1
    assert clock.sleeps == [3600.0]
    assert clock.monotonic() == 3610.0
    assert clock.time() == 4600.0


def test_fake_clock_zero_sleep_is_not_a_sleep():
    clock = FakeClock()
    clock.sleep(0)
    assert clock.sleeps == []
    assert clock.monotonic() == 0.0


def test_fake_clock_stop_event_wins():
    clock = FakeClock()
    stop = threading.Event()
    stop.set()
    assert clock.sleep(10, stop) is True
    assert clock.sleeps == []


def test_fake_clock_advance_validates():
    clock = FakeClock()
    clock.advance(5)
    assert clock.time() - 1_700_000_000.0 == 5.0
    with pytest.raises(ValueError, match="finite and >= 0"):
        clock.advance(-1)
    with pytest.raises(ValueError, match="cannot sleep forever"):
        clock.sleep(float("inf"))


def test_fake_clock_is_thread_safe():
    clock = FakeClock()

    def work() -> None:
        for _ in range(1000):
            clock.sleep(1)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert clock.monotonic() == 4000.0
    assert len(clock.sleeps) == 4000


def test_manual_fake_clock_blocks_a_sleeper_until_advanced():
    clock = FakeClock(auto_advance=False)
    woke = threading.Event()

    def sleeper() -> None:
        clock.sleep(10)
        woke.set()

    thread = threading.Thread(target=sleeper)
    thread.start()
    clock.wait_for_sleepers(1)
    clock.advance(9.5)
    assert not woke.wait(0.05)
    assert clock.sleepers == 1
    clock.advance(0.5)
    assert woke.wait(5)
    thread.join(5)
    assert clock.sleepers == 0
    assert clock.sleeps == [10.0]


def test_manual_fake_clock_sleeper_is_stopped_by_its_event():
    clock = FakeClock(auto_advance=False)
    stop = threading.Event()
    result: list[bool] = []
    thread = threading.Thread(target=lambda: result.append(clock.sleep(100, stop)))
    thread.start()
    clock.wait_for_sleepers(1)
    stop.set()
    thread.join(5)
    assert result == [True]
    assert clock.monotonic() == 0.0


def test_wait_for_sleepers_times_out():
    with pytest.raises(TimeoutError, match="expected 1 sleeping"):
        FakeClock(auto_advance=False).wait_for_sleepers(1, timeout=0.01)
