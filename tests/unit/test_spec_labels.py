"""A job's backend labels (``JobSpec.labels``, docs/scheduling.md "Placement across
backends"): checked where they come in, kept sorted and once each, and carried through
the dict form the store and the gateway use."""

from __future__ import annotations

import pytest

from protocol import JobSpec, ValidationError

HI = [{"role": "user", "content": "hi"}]


def test_labels_are_sorted_once_each_and_survive_the_round_trip() -> None:
    spec = JobSpec.chat(model="llama3.2", messages=HI, labels=["region=eu", "gpu:a100", "gpu:a100"])
    assert spec.labels == ("gpu:a100", "region=eu")
    assert spec.to_dict()["labels"] == ["gpu:a100", "region=eu"]
    assert JobSpec.from_dict(spec.to_dict()) == spec
    generated = JobSpec.generate(model="llama3.2", prompt="p", labels=("a-b_c.d",))
    assert JobSpec.from_dict(generated.to_dict()).labels == ("a-b_c.d",)


def test_a_stored_spec_without_labels_reads_back_with_none() -> None:
    data = JobSpec.generate(model="llama3.2", prompt="p").to_dict()
    assert "labels" not in data, "a spec without labels keeps its old form"
    assert JobSpec.from_dict(data).labels == ()
    assert JobSpec.generate(model="llama3.2", prompt="p", labels=[]).labels == ()


@pytest.mark.parametrize(
    "labels", [["gpu a100"], [""], ["x" * 65], ["ok", 7], "gpu:a100", None, ["é"]]
)
def test_a_bad_label_is_refused_naming_labels_and_what_is_allowed(labels: object) -> None:
    with pytest.raises(ValidationError) as refused:
        JobSpec.generate(model="llama3.2", prompt="p", labels=labels)
    assert refused.value.field == "labels"
    assert "1 to 64 characters from A-Z a-z 0-9 _ . : = -" in str(refused.value.allowed)


def test_a_label_of_64_characters_is_taken() -> None:
    assert JobSpec.generate(model="m", prompt="p", labels=["x" * 64]).labels == ("x" * 64,)
