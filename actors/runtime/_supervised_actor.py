"""SupervisedActor: a pykka actor whose every way of ending reaches its supervisor once.

pykka reports endings unevenly: a failing ``on_start`` is only logged, a crash in a
tell handler calls ``on_failure``, an error in ``on_stop`` is logged, and a
BaseException makes pykka stop every actor in the process. SupervisedActor wraps
the public hooks so that each of these becomes exactly one ``ChildExited`` told to
the supervisor, and turns a BaseException into the end of this actor alone.

The link to the supervisor is picked up without the factory's help: the
supervisor sets a context variable while it calls the factory, and
``SupervisedActor.__init__`` (which runs in the caller's thread) captures it.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import queue
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any, ClassVar

import pykka
import structlog

from actors.runtime._pykka import Envelope, HookedActor
from actors.runtime._stable_refs import StableAsk
from actors.runtime._vocabulary import (
    ActorKilledError,
    ChildExited,
    ChildExitedError,
    ChildReady,
    ExitKind,
    ExitReason,
)

__all__ = ["Link", "SupervisedActor", "linked_to"]

log = structlog.get_logger(__name__)


class Link:
    """Where a supervised actor reports: its supervisor's ref and its own child id."""

    __slots__ = ("child_id", "supervisor")

    def __init__(self, supervisor: pykka.ActorRef[Any], child_id: str) -> None:
        self.supervisor = supervisor
        self.child_id = child_id

    def ready(self, urn: str) -> None:
        """Tell the supervisor that instance ``urn`` finished on_start."""
        self._tell(ChildReady(self.child_id, urn))

    def exited(self, urn: str, reason: ExitReason) -> None:
        """Tell the supervisor that instance ``urn`` ended."""
        self._tell(ChildExited(self.child_id, urn, reason))

    def _tell(self, message: ChildReady | ChildExited) -> None:
        """Tell the supervisor; a supervisor already gone has nobody left to hear it."""
        try:
            self.supervisor.tell(message)
        except pykka.ActorDeadError:
            log.debug("supervisor_gone", child=self.child_id, report=type(message).__name__)


_current_link: contextvars.ContextVar[Link | None] = contextvars.ContextVar(
    "gpulane_supervision_link", default=None
)


@contextlib.contextmanager
def linked_to(link: Link) -> Iterator[None]:
    """While this block runs, every SupervisedActor constructed in this thread reports to ``link``.

    The supervisor keeps only the instance its factory returns; any helper actor the
    factory also starts reports too, and the supervisor ignores it by its urn.
    """
    token = _current_link.set(link)
    try:
        yield
    finally:
        _current_link.reset(token)


class SupervisedActor(HookedActor):
    """Base class for actors a Supervisor runs; subclass it like pykka.ThreadingActor.

    Behaviour kept from pykka: an ask whose handler raises returns the error to the
    asker and the actor lives on; a tell whose handler raises ends the actor.
    """

    #: Report readiness when on_start returns; a Supervisor reports it later itself.
    ready_after_on_start: ClassVar[bool] = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._supervision_link = _current_link.get()
        self._supervision_exit_reported = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _wrap_hooks(cls)

    # The defaults, wrapped like any subclass's own hooks (see the end of this module).
    def on_start(self) -> None:
        """Nothing to set up by default."""

    def on_stop(self) -> None:
        """Nothing to clean up by default."""

    def on_failure(
        self,
        exception_type: type[BaseException] | None,
        exception_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Nothing to clean up by default."""

    def on_end(self) -> None:
        """Release what this instance holds (worker threads, timers, connections), however
        it ends: called after its on_stop, or after its on_failure when it crashed, before
        its exit is announced, so the next instance starts with nothing left over.
        Nothing by default."""

    def on_receive(self, message: Any) -> Any:
        """pykka's default: log an unexpected message."""
        return super().on_receive(message)

    def killed_by(self, error: BaseException) -> Exception:
        """A BaseException escaped a handler: end this actor alone, reported as KILLED."""
        self._terminate(ExitReason.from_exception(ExitKind.KILLED, error))
        return ActorKilledError(f"{self} was stopped by {error!r}")

    def salvage_mailbox(self, wanted: Callable[[Any, bool], bool]) -> int:
        """Handle, in order, what already waits in the mailbox of this crashed instance.

        Call it from ``on_failure``: pykka has marked the actor stopped, so nothing new
        arrives (senders hold their messages for the next instance). The messages pykka
        would drop with the instance (tells, and asks sent through a stable reference)
        that ``wanted(message, asked)`` picks are handled by ``on_receive`` and their
        askers answered; the rest are left for pykka, which fails its own asks with
        ActorDeadError. Returns how many were handled.
        """
        mailbox = self.mailbox
        leftover: list[Envelope[Any]] = []
        handled = 0
        while True:
            try:
                envelope = mailbox.get_nowait()
            except queue.Empty:
                break
            message = envelope.message
            stable = isinstance(message, StableAsk)
            inner = message.message if stable else message
            if (stable or envelope.reply_to is None) and wanted(inner, stable):
                handled += 1
                try:
                    self.on_receive(message)
                except Exception:
                    log.exception("salvage_failed", actor=str(self), message=type(inner).__name__)
            else:
                leftover.append(envelope)
        for envelope in leftover:
            mailbox.put(envelope)
        return handled

    def _announce_ready(self) -> None:
        """Tell the supervisor (if any) that this instance is ready for messages."""
        if self._supervision_link is not None:
            self._supervision_link.ready(self.actor_urn)

    def _announce_exit(self, reason: ExitReason) -> None:
        """Tell the supervisor (if any) how this instance ended; only the first call counts."""
        if self._supervision_exit_reported:
            return
        self._supervision_exit_reported = True
        if self._supervision_link is not None:
            self._supervision_link.exited(self.actor_urn, reason)

    def _terminate(self, reason: ExitReason) -> None:
        """End this actor after the current message, with ``reason``; call from its own thread.

        Uses only public pykka API (the registry and ``actor_stopped``), as pykka's
        own failure handling does; queued asks are then failed with ActorDeadError.
        """
        pykka.ActorRegistry.unregister(self.actor_ref)
        self.actor_stopped.set()
        self._announce_exit(reason)


def _outermost(actor: SupervisedActor, name: str, wrapper: Callable[..., Any]) -> bool:
    """True when ``wrapper`` is the most derived definition of hook ``name`` (not super())."""
    return bool(getattr(type(actor), name) is wrapper)


def _wrap_on_start(hook: Callable[[SupervisedActor], None]) -> Callable[[SupervisedActor], None]:
    @functools.wraps(hook)
    def on_start(self: SupervisedActor) -> None:
        if not _outermost(self, "on_start", on_start):
            return hook(self)
        try:
            hook(self)
        except BaseException as error:
            self._terminate(ExitReason.from_exception(ExitKind.START_FAILED, error))
            if isinstance(error, Exception):
                raise  # pykka logs it and stops the actor
            # pykka catches only Exception around on_start: a BaseException would end the
            # thread with the actor still registered.
            raise ActorKilledError(f"{self} failed to start: {error!r}") from error
        if type(self).ready_after_on_start:
            self._announce_ready()

    return on_start


def _wrap_on_stop(hook: Callable[[SupervisedActor], None]) -> Callable[[SupervisedActor], None]:
    @functools.wraps(hook)
    def on_stop(self: SupervisedActor) -> None:
        if not _outermost(self, "on_stop", on_stop):
            return hook(self)
        try:
            hook(self)
            self.on_end()
        except BaseException as error:
            self._announce_exit(ExitReason.from_exception(ExitKind.STOP_FAILED, error))
            if isinstance(error, Exception):
                raise  # pykka logs it
            raise ActorKilledError(f"{self} failed to stop: {error!r}") from error
        self._announce_exit(ExitReason.normal())

    return on_stop


_FailureHook = Callable[
    [SupervisedActor, type[BaseException] | None, BaseException | None, TracebackType | None],
    None,
]


def _wrap_on_failure(hook: _FailureHook) -> _FailureHook:
    @functools.wraps(hook)
    def on_failure(
        self: SupervisedActor,
        exception_type: type[BaseException] | None,
        exception_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if not _outermost(self, "on_failure", on_failure):
            return hook(self, exception_type, exception_value, traceback)
        try:
            try:
                hook(self, exception_type, exception_value, traceback)
            finally:
                self.on_end()
        except BaseException:  # a BaseException here would escape pykka's loop entirely
            log.exception("on_failure_failed", actor=str(self))
        finally:
            error = exception_value if exception_value is not None else RuntimeError("unknown")
            self._announce_exit(ExitReason.from_exception(ExitKind.CRASHED, error))

    return on_failure


def _wrap_on_receive(
    hook: Callable[[SupervisedActor, Any], Any],
) -> Callable[[SupervisedActor, Any], Any]:
    @functools.wraps(hook)
    def on_receive(self: SupervisedActor, message: Any) -> Any:
        if not isinstance(message, StableAsk) or not _outermost(self, "on_receive", on_receive):
            return hook(self, message)
        try:
            result = hook(self, message.message)
        except Exception as error:
            message.pending.fail(error)
            return None
        except BaseException as error:
            reason = ExitReason.from_exception(ExitKind.KILLED, error)
            message.pending.fail(ChildExitedError(_child_id(self), reason))
            raise
        message.pending.resolve(result)
        return None

    return on_receive


def _child_id(actor: SupervisedActor) -> str:
    link = actor._supervision_link
    return link.child_id if link is not None else str(actor)


_WRAPPERS: dict[str, Callable[[Any], Any]] = {
    "on_start": _wrap_on_start,
    "on_stop": _wrap_on_stop,
    "on_failure": _wrap_on_failure,
    "on_receive": _wrap_on_receive,
}


def _wrap_hooks(cls: type[SupervisedActor]) -> None:
    """Wrap the pykka hooks ``cls`` defines itself; inherited ones are wrapped already."""
    for name, wrap in _WRAPPERS.items():
        hook = cls.__dict__.get(name)
        if hook is not None and callable(hook):
            setattr(cls, name, wrap(hook))


_wrap_hooks(SupervisedActor)
