"""gpulane's public test kit: a fake GPU whose calls the test drives, a manual clock, and
quiescence, for testing a bot against gpulane without a model server.

It imports no test framework, so a host application can use it anywhere. With pytest,
installing gpulane registers the fixtures ``lane``, ``fake_gpu`` and ``manual_clock``
(``actors.testing.pytest_plugin``)::

    def test_my_bot_gets_an_answer(lane, fake_gpu):
        ticket = lane.submit(JobSpec.chat(model="m", messages=[{"role": "user", "content": "hi"}]))
        call = fake_gpu.next_call()
        call.emit("Hello")
        call.finish(" there")
        assert ticket.result(timeout=5) == "Hello there"

``quiesce()`` waits until no message is in flight, no worker busy and no timer due (trio's
``wait_all_tasks_blocked``): after it, "nothing happened" is a fact, not a time window.
"""

from actors.runtime import ManualClock, is_quiet, quiesce
from actors.testing._fakes import FakeBackend, FakeCall, FakeGpu, InjectedFault
from actors.testing._waiting import wait_until

__all__ = [
    "FakeBackend",
    "FakeCall",
    "FakeGpu",
    "InjectedFault",
    "ManualClock",
    "is_quiet",
    "quiesce",
    "wait_until",
]
