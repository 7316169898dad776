"""What the translated backends share (``actors.backends.translate``): an image's media
type from its first bytes, the ids that pair tool calls with their results, and tool
calls assembled from pieces."""

from __future__ import annotations

import base64

import pytest

from actors.backends.translate import IMAGE_TYPES, ToolCallAssembly, call_ids, image_media_type
from protocol import BackendError, ChatMessage, ToolCall, ValidationError


@pytest.mark.parametrize(
    ("head", "media_type"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00", "image/png"),
        (b"\xff\xd8\xff\xdb\x00\x43", "image/jpeg"),
        (b"GIF87a\x01\x00", "image/gif"),
        (b"GIF89a\x01\x00", "image/gif"),
        (b"RIFF\x24\x00\x00\x00WEBPVP8 ", "image/webp"),
    ],
)
def test_an_images_media_type_comes_from_its_magic_bytes(head: bytes, media_type: str) -> None:
    image = base64.b64encode(head + b"\x00" * 32).decode()
    assert image_media_type(image, "images[0]") == media_type


@pytest.mark.parametrize(("image", "problem"), [("aGk=", "not an image"), ("!!!!", "not base64")])
def test_what_is_not_a_known_image_is_refused_naming_the_field(image: str, problem: str) -> None:
    with pytest.raises(ValidationError) as caught:
        image_media_type(image, "messages[2].images[1]")
    assert caught.value.field == "messages[2].images[1]" and problem in str(caught.value)
    if problem == "not an image":
        assert caught.value.allowed == IMAGE_TYPES


def test_tool_results_find_their_calls_by_id_then_by_name_in_order_then_by_position() -> None:
    calls = [
        {"id": "call_x", "function": {"name": "weather", "arguments": {"city": "Paris"}}},
        {"function": {"name": "weather", "arguments": {"city": "Rome"}}},
        {"function": {"name": "time", "arguments": {}}},
    ]
    messages = [
        ChatMessage.parse({"role": "user", "content": "?"}, 0),
        ChatMessage.parse({"role": "assistant", "content": "", "tool_calls": calls}, 1),
        ChatMessage.parse({"role": "tool", "content": "a", "tool_name": "weather"}, 2),
        ChatMessage.parse({"role": "tool", "content": "b", "tool_name": "weather"}, 3),
        ChatMessage.parse({"role": "tool", "content": "c"}, 4),
        ChatMessage.parse({"role": "tool", "content": "d", "tool_name": "weather"}, 5),
        ChatMessage.parse({"role": "tool", "content": "e", "tool_call_id": "call_x"}, 6),
    ]
    ids, answers = call_ids(messages)
    assert ids[1] == ("call_x", "call_1_1", "call_1_2") and ids[0] == ids[2] == ()
    # Parallel calls of one tool are answered in the order they were made.
    assert answers == [None, None, "call_x", "call_1_1", "call_1_2", None, "call_x"]


def test_streamed_pieces_become_whole_calls_numbered_in_the_order_they_began() -> None:
    calls = ToolCallAssembly("the server")
    calls.add(3, id="a", name="weather", arguments='{"city"')
    calls.add(3, arguments=': "Paris"}')
    calls.add(5, id="b", name="time", whole={"zone": "UTC"})
    assert calls.finish_before(5) == (ToolCall("weather", {"city": "Paris"}, id="a", index=0),)
    assert calls.open_indexes == (5,)
    assert calls.finish_all() == (ToolCall("time", {"zone": "UTC"}, id="b", index=1),)


def test_a_call_without_a_name_is_a_permanent_error_naming_it() -> None:
    calls = ToolCallAssembly("the server")
    calls.add(0, arguments="{}")
    with pytest.raises(BackendError) as caught:
        calls.finish_all()
    assert not caught.value.transient and "tool_calls[0].name" in str(caught.value)
