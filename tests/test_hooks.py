"""`modelforge.on_record(fn)`: your function sees each finished record once, off the call
path; a slow or failing hook never delays or breaks the call."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

import modelforge
from modelforge import hooks, recorder, track_usage
from modelforge.records import CallRecord, price_call
from modelforge.usage import Usage


def _call(run_id: str) -> CallRecord:
    usage = Usage(input_tokens=1000, output_tokens=100)
    return CallRecord(run_id=run_id, usage=usage, cost=price_call(usage, "gpt-4o", None, None))


@pytest.fixture(autouse=True)
def no_hooks_left() -> Iterator[None]:
    yield
    hooks.wait()
    hooks._hooks.clear()


def test_each_record_reaches_the_hook_once_with_its_attribution() -> None:
    seen: list[tuple[str, str | None]] = []
    remove = modelforge.on_record(lambda r: seen.append((r.run_id, r.agent)))
    with track_usage(persist=False, agent="planner") as session:
        record = _call("one")
        recorder.deliver(record, persist=False)
        recorder.deliver(record, sessions=[session], persist=False)  # the same run again
    recorder.deliver(_call("two"), persist=False)
    assert hooks.wait()
    assert seen == [("one", "planner"), ("two", None)]
    remove()
    recorder.deliver(_call("three"), persist=False)
    assert hooks.wait()
    assert [run_id for run_id, _ in seen] == ["one", "two"]


def test_a_slow_hook_never_blocks_the_call() -> None:
    release = threading.Event()
    released_in_time: list[bool] = []
    modelforge.on_record(lambda r: released_in_time.append(release.wait(5)))
    recorder.deliver(_call("slow"), persist=False)
    # Had deliver waited for the hook, the hook would have timed out before this line.
    release.set()
    assert hooks.wait()
    assert released_in_time == [True]


def test_a_failing_hook_is_counted_and_the_others_still_run() -> None:
    seen: list[str] = []

    def broken(record: CallRecord) -> None:
        raise ValueError("my display broke")

    modelforge.on_record(broken)
    modelforge.on_record(lambda r: seen.append(r.run_id))
    errors = recorder.handler_errors()
    recorder.deliver(_call("a"), persist=False)
    recorder.deliver(_call("b"), persist=False)
    assert hooks.wait()
    assert seen == ["a", "b"]
    assert recorder.handler_errors() == errors + 2
