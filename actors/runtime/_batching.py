"""The batching inbox: a mailbox whose reader may take the messages at its head together.

An actor that commits writes in groups (the job store's group commit) handles one
message and, while it does, takes the qualifying messages queued right behind it. Each
comes out as a :class:`Delivery`: the message as it was sent, whether someone waits for
the answer, and the means to give it, whether it was asked through pykka or through a
stable reference. The actor never sees pykka's envelopes or the stable-ask wrapper.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from actors.runtime._mailbox import Mailbox
from actors.runtime._pykka import Envelope
from actors.runtime._stable_refs import StableAsk

__all__ = ["BatchingInbox", "Delivery", "Wanted"]

#: Picks messages by ``(message, asked)``: the message as sent, and whether an asker waits.
Wanted = Callable[[Any, bool], bool]


class Delivery:
    """One message taken ahead of its turn, with the way to answer its sender."""

    __slots__ = ("_envelope", "asked", "message")

    def __init__(self, envelope: Envelope[Any]) -> None:
        self._envelope = envelope
        sent = envelope.message
        stable = isinstance(sent, StableAsk)
        self.message: Any = sent.message if stable else sent
        self.asked: bool = stable or envelope.reply_to is not None

    def answer(self, outcome: Any) -> None:
        """Give the asker ``outcome``; an Exception is raised to it. A tell has nobody to answer."""
        sent = self._envelope.message
        if isinstance(sent, StableAsk):
            if isinstance(outcome, Exception):
                sent.pending.fail(outcome)
            else:
                sent.pending.resolve(outcome)
            return
        reply_to = self._envelope.reply_to
        if reply_to is None:
            return
        if isinstance(outcome, Exception):
            reply_to.set_exception(exc_info=(type(outcome), outcome, outcome.__traceback__))
        else:
            reply_to.set(outcome)


def _parts(envelope: Envelope[Any]) -> tuple[Any, bool]:
    """The message as sent and whether an asker waits, without building a Delivery."""
    sent = envelope.message
    if isinstance(sent, StableAsk):
        return sent.message, True
    return sent, envelope.reply_to is not None


class BatchingInbox(Mailbox):
    """A mailbox whose one reader may take the messages at its head that qualify."""

    def take_while(self, wanted: Wanted, limit: int) -> list[Delivery]:
        """Pop and return the head messages, at most ``limit``, up to the first not ``wanted``.

        Only the actor's own thread pops, so the head cannot change between the test
        and the pop; senders only append behind it.
        """
        taken: list[Delivery] = []
        waiting = self.waiting
        while waiting and len(taken) < limit and wanted(*_parts(waiting[0])):
            taken.append(Delivery(waiting.popleft()))
        return taken

    def run_all(self, joins: Wanted, test: Wanted) -> bool:
        """Whether ``test`` holds for every message of the run at the head that ``joins`` takes.

        A look, not a take: the reader decides from it how to handle the batch it is
        about to drain. It looks at a copy, as senders may append meanwhile.
        """
        for envelope in list(self.waiting):
            parts = _parts(envelope)
            if not joins(*parts):
                return True
            if not test(*parts):
                return False
        return True
