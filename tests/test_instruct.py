"""Instruction-data filters on chat/instruction records."""

import pytest

from fastlm.data.instruct import (
    DuplicatePrompt,
    EmptyResponse,
    InstructConfig,
    RepeatsPrompt,
    TooLong,
    build_instruct_filters,
    check_instruct,
    normalize,
)


def alpaca(instruction, output, inp=""):
    return {"instruction": instruction, "input": inp, "output": output}


def chat(*contents):
    roles = ["user", "assistant"] * len(contents)
    return {"messages": [{"role": r, "content": c} for r, c in zip(roles, contents)]}


@pytest.mark.parametrize("data,expected", [
    (alpaca("Say hi", ""), "instruct:empty_response"),
    (alpaca("Say hi", " \n\t "), "instruct:empty_response"),
    (chat("q1", "a1", "q2", "   "), "instruct:empty_response"),
    ({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": ""}]}, "instruct:empty_response"),
    (alpaca("Say hi", "hi"), None),
    ({"text": ""}, None),  # not a chat record: not this filter's business
])
def test_empty_response(data, expected):
    assert EmptyResponse().check_record(data) == expected


@pytest.mark.parametrize("prompt,response,expected", [
    ("What is the capital of France?", "What is the capital of France?", True),
    ("What is the capital of France?", "what is the capital of france", True),  # normalized exact
    ("Write a poem about the sea and the sky.", "Write a poem about the sea and sky.", True),  # near
    ("What is the capital of France?", "The capital of France is Paris.", False),
    ("Fix: teh cat sat on teh mat", "The cat sat on the mat.", False),
    ("hi", "", False),
    ("", "anything", False),
])
def test_repeats_prompt(prompt, response, expected):
    f = RepeatsPrompt()
    assert f.repeats(prompt, response) is expected
    assert f.check_record(alpaca(prompt, response)) == ("instruct:repeats_prompt" if expected else None)


def test_repeats_prompt_per_turn_and_threshold():
    assert RepeatsPrompt().check_record(chat("q one", "answer", "say it back: x y z", "say it back x y z")) \
        == "instruct:repeats_prompt"
    loose = RepeatsPrompt(overlap=0.5)
    assert loose.check_record(alpaca("the cat sat on the mat", "the cat sat on a rug")) == "instruct:repeats_prompt"
    with pytest.raises(ValueError):
        RepeatsPrompt(overlap=0)


@pytest.mark.parametrize("overlap,expected", [(0.56, True), (0.28, True), (0.57, False)])
def test_repeats_prompt_ratio_exactly_at_threshold(overlap, expected):
    # 7 prompt words all repeated in an 18-word response: ratio 2 * 7 / 25 = 0.56 (and 14 / 50 for 0.28, with
    # 32 more words); "at least repeat_overlap" must flag it, even where overlap * 25 rounds above 14 in floats
    prompt = " ".join(f"w{i}" for i in range(7))
    extra = 43 - 7 if overlap == 0.28 else 11
    response = prompt + " " + " ".join(f"x{i}" for i in range(extra))
    assert RepeatsPrompt(overlap=overlap).repeats(prompt, response) is expected


def test_too_long():
    data = chat("one two three", "four five")  # rendered "one two three\n\nfour five": 24 chars, 5 words
    assert TooLong(max_words=5).check_record(data) is None
    assert TooLong(max_words=4).check_record(data) == "instruct:too_long_words"
    assert TooLong(max_chars=24).check_record(data) is None
    assert TooLong(max_chars=23).check_record(data) == "instruct:too_long_chars"
    assert TooLong(max_chars=1).check_record({"text": "long plain text"}) is None
    with pytest.raises(ValueError):
        TooLong(max_chars=0)


def test_duplicate_prompts_first_kept_stateful():
    f = DuplicatePrompt()
    stream = [alpaca("Name a fruit.", "apple"), alpaca("name a FRUIT", "pear"), alpaca("Name a fruit.", "fig", "x"),
              chat("Name a fruit.", "kiwi"), {"text": "Name a fruit."}, alpaca("Name a fruit", "plum")]
    assert f.check_records(stream) == [None, "instruct:duplicate_prompt", None, "instruct:duplicate_prompt", None,
                                       "instruct:duplicate_prompt"]
    assert DuplicatePrompt().check_record(stream[1]) is None  # new instance, new state
    # system prompt is part of the prompt
    with_system = {"instruction": "Name a fruit.", "output": "x", "system": "Answer in French."}
    assert f.check_record(with_system) is None


def test_config_and_check_instruct_order():
    assert [type(f).__name__ for f in build_instruct_filters(InstructConfig(max_words=10))] == [
        "EmptyResponse", "RepeatsPrompt", "TooLong", "DuplicatePrompt"]
    assert build_instruct_filters(InstructConfig(empty_response=False, repeats_prompt=False,
                                                 duplicate_prompts=False)) == []
    filters = build_instruct_filters(InstructConfig(max_words=6))
    stream = [alpaca("Q1", ""), alpaca("Q2 please", "q2 please"), alpaca("Q3", "a " * 10),
              alpaca("Q4", "fine"), alpaca("q4", "again"), {"text": "plain"}]
    reasons = [check_instruct(d, filters) for d in stream]
    assert reasons == ["instruct:empty_response", "instruct:repeats_prompt", "instruct:too_long_words", None,
                       "instruct:duplicate_prompt", None]


def test_normalize_and_malformed_chat_ignored():
    assert normalize("Ünïcode, TEXT!!  ok") == "ünïcode text ok"
    assert EmptyResponse().check_record({"messages": [{"role": "alien", "content": ""}]}) is None


def test_real_text_pydoc_as_instructions():
    from pydoc_data.topics import topics

    filters = build_instruct_filters()
    records = [alpaca(f"Explain {k}.", v) for k, v in sorted(topics.items())]
    assert [check_instruct(d, filters) for d in records] == [None] * len(records)
    assert check_instruct(records[0], filters) == "instruct:duplicate_prompt"  # seen already
