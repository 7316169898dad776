"""The one module that touches pykka's private API; the rest of gpulane uses only its public one.

pykka has no supervision, and the runtime needs four things its public API does not
give, all reached through names pykka marks private. They are pinned by the pykka range
in ``setup.cfg`` (the range these were tested on) and used nowhere else:

- ``Actor._create_actor_inbox`` and ``_create_future``: pykka's extension hooks for the
  mailbox and the ask future (gpulane's own are lighter, see ``_mailbox`` and ``_future``);
- ``Actor._start_actor_loop`` and ``_actor_loop``: where an actor's thread begins and ends,
  so the runtime knows which mailboxes have a live reader (quiescence);
- ``Actor._handle_receive``: every message passes it, and pykka answers a BaseException
  escaping it by stopping every actor in the process;
- ``pykka._envelope.Envelope``: what a mailbox holds (``message`` and ``reply_to``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import pykka
from pykka._envelope import Envelope

from actors.runtime import _quiescence
from actors.runtime._future import LatchFuture
from actors.runtime._mailbox import Mailbox

if TYPE_CHECKING:
    from pykka._actor import ActorInbox

__all__ = ["Envelope", "HookedActor"]


class HookedActor(pykka.ThreadingActor):
    """A ThreadingActor on gpulane's mailbox and latch future, whose thread the runtime sees.

    ``mailbox_type`` chooses the mailbox (a subclass of :class:`Mailbox`, such as the
    batching inbox the job store reads). :meth:`killed_by` decides what a BaseException
    escaping a handler becomes, instead of pykka stopping every actor.
    """

    mailbox_type: ClassVar[type[Mailbox]] = Mailbox

    @classmethod
    def _create_actor_inbox(cls) -> ActorInbox:
        return cls.mailbox_type()

    @staticmethod
    def _create_future() -> pykka.Future[Any]:
        return LatchFuture()

    @property
    def mailbox(self) -> Mailbox:
        """This actor's mailbox (what ``actor_inbox`` holds, with its real type)."""
        inbox = self.actor_inbox
        assert isinstance(inbox, Mailbox)
        return inbox

    def _start_actor_loop(self) -> None:
        _quiescence.watch(self.mailbox)
        super()._start_actor_loop()

    def _actor_loop(self) -> None:
        try:
            super()._actor_loop()
        finally:
            _quiescence.forget(self.mailbox)

    def _handle_receive(self, message: Any) -> Any:
        try:
            return super()._handle_receive(message)
        except Exception:
            raise
        except BaseException as error:
            raise self.killed_by(error) from error

    def killed_by(self, error: BaseException) -> Exception:
        """A BaseException escaped a handler: end this actor alone and return what to raise.

        Runs on the actor's thread. The default stops this actor only; the error it returns
        is answered to an asker (or is the crash of a tell).
        """
        pykka.ActorRegistry.unregister(self.actor_ref)
        self.actor_stopped.set()
        return RuntimeError(f"{self} was stopped by {error!r}")
