"""gpulane's vocabulary: immutable values, errors and messages, with no I/O and no threads."""

from protocol.backend import (
    REQUEST_FEATURES,
    BackendRequest,
    BackendResult,
    EmbedResult,
    LoadedModel,
)
from protocol.config import (
    ActiveHours,
    CallerLimits,
    Limits,
    ResidencySettings,
    RetryPolicy,
    SchedulingPolicy,
    StoreSettings,
)
from protocol.enums import TERMINAL_STATES, CancelReason, JobKind, JobState, Lane, Priority
from protocol.errors import (
    BackendError,
    GpulaneError,
    IllegalTransitionError,
    JobCancelledError,
    JobFailedError,
    JobNotFoundError,
    QueueFullError,
    RateLimitedError,
    StoreError,
    SystemStoppedError,
    ValidationError,
)
from protocol.frozen import freeze, is_deeply_immutable, thaw
from protocol.job import Job, JobMetrics
from protocol.lifecycle import LEGAL_TRANSITIONS, check_transition, is_legal_transition
from protocol.output import Answer, Chunk, Logprob, Output, TokenLogprob
from protocol.spec import (
    RELOAD_OPTIONS,
    THINK_LEVELS,
    ChatMessage,
    JobSpec,
    normalise_model_name,
)
from protocol.tools import Tool, ToolCall

__all__ = [
    "LEGAL_TRANSITIONS",
    "RELOAD_OPTIONS",
    "REQUEST_FEATURES",
    "TERMINAL_STATES",
    "THINK_LEVELS",
    "ActiveHours",
    "Answer",
    "BackendError",
    "BackendRequest",
    "BackendResult",
    "CallerLimits",
    "CancelReason",
    "ChatMessage",
    "Chunk",
    "EmbedResult",
    "GpulaneError",
    "IllegalTransitionError",
    "Job",
    "JobCancelledError",
    "JobFailedError",
    "JobKind",
    "JobMetrics",
    "JobNotFoundError",
    "JobSpec",
    "JobState",
    "Lane",
    "Limits",
    "LoadedModel",
    "Logprob",
    "Output",
    "Priority",
    "QueueFullError",
    "RateLimitedError",
    "ResidencySettings",
    "RetryPolicy",
    "SchedulingPolicy",
    "StoreError",
    "StoreSettings",
    "SystemStoppedError",
    "TokenLogprob",
    "Tool",
    "ToolCall",
    "ValidationError",
    "check_transition",
    "freeze",
    "is_deeply_immutable",
    "is_legal_transition",
    "normalise_model_name",
    "thaw",
]
