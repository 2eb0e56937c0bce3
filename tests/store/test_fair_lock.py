"""SQLite's one writer, shared in arrival order, an HL7 sender waiting for its ACK first."""

from __future__ import annotations

import threading
import time

from opensegur.store.db import FairLock


def _queue(lock: FairLock, order: list[str], name: str, urgent: bool) -> threading.Thread:
    def run() -> None:
        lock.acquire(urgent)
        order.append(name)
        lock.release()

    thread = threading.Thread(target=run)
    thread.start()
    time.sleep(0.05)  # queued before the next one arrives
    return thread


def test_waiters_take_turns_in_arrival_order_and_an_urgent_one_goes_before_the_others() -> None:
    lock, order = FairLock(), []
    lock.acquire()  # a worker's transaction in progress
    threads = [
        _queue(lock, order, "worker 1", urgent=False),
        _queue(lock, order, "worker 2", urgent=False),
        _queue(lock, order, "ACK 1", urgent=True),
        _queue(lock, order, "worker 3", urgent=False),
        _queue(lock, order, "ACK 2", urgent=True),
    ]
    assert order == []
    lock.release()
    for thread in threads:
        thread.join(timeout=5)
    assert order == ["ACK 1", "ACK 2", "worker 1", "worker 2", "worker 3"]
    lock.acquire(urgent=True)  # free again: taken at once
    lock.release()


def test_a_saturated_intake_lets_a_worker_through_every_few_turns() -> None:
    lock, order = FairLock(), []
    lock.acquire()
    threads = [_queue(lock, order, "worker", urgent=False)]
    threads += [_queue(lock, order, f"ACK {i}", urgent=True) for i in range(1, 7)]
    lock.release()
    for thread in threads:
        thread.join(timeout=5)
    assert order == ["ACK 1", "ACK 2", "ACK 3", "ACK 4", "worker", "ACK 5", "ACK 6"]
