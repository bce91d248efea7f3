"""Chat/instruction formats: detection, parsing, conversion both ways, round trips, reported failures."""

import pytest

from fastlm.data.chat import (
    ConversionError,
    convert,
    convert_records,
    detect_format,
    map_contents,
    parse,
    record_text,
    render_turns,
)
from fastlm.data.records import DataError, ErrorLog, Record

ALPACA = {"id": "a1", "instruction": "Translate to French.", "input": "cat", "output": "chat", "meta": {"src": "x"}}
SHAREGPT = {"id": "s1", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}]}
SHAREGPT_RC = {"conversation": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}
MESSAGES = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                         {"role": "assistant", "content": "Hello!"}], "source": "m"}
PROMPT = {"prompt": "2+2=", "completion": "4", "id": 9}

MULTI = {
    "id": "conv-7",
    "tags": ["math"],
    "conversations": [
        {"from": "system", "value": "You are a calculator."},
        {"from": "human", "value": "1+1?"},
        {"from": "gpt", "value": "2"},
        {"from": "human", "value": "times 3?"},
        {"from": "gpt", "value": "6"},
        {"from": "human", "value": "minus 1?"},
        {"from": "gpt", "value": "5"},
    ],
}


@pytest.mark.parametrize("data,fmt", [(ALPACA, "alpaca"), (SHAREGPT, "sharegpt"), (SHAREGPT_RC, "sharegpt"),
                                      (MESSAGES, "messages"), (PROMPT, "prompt_completion"),
                                      ({"text": "plain"}, None), ([1], None)])
def test_detect(data, fmt):
    assert detect_format(data) == fmt


@pytest.mark.parametrize("role,mapped", [("human", "user"), ("USER", "user"), ("prompter", "user"),
                                         ("gpt", "assistant"), ("chatgpt", "assistant"), ("bing", "assistant"),
                                         ("bard", "assistant"), ("model", "assistant"), ("system", "system")])
def test_role_aliases(role, mapped):
    assert parse({"conversations": [{"from": role, "value": "x"}]}).turns[0].role == mapped


@pytest.mark.parametrize("data,reason", [
    ({"conversations": [{"from": "tool", "value": "x"}]}, "unknown_role"),
    ({"messages": [{"role": None, "content": "x"}]}, "unknown_role"),
    ({"conversations": []}, "empty_conversation"),
    ({"messages": [{"role": "user"}]}, "missing_field"),
    ({"messages": ["hi"]}, "wrong_type"),
    ({"messages": [{"role": "user", "content": 5}]}, "wrong_type"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "u"}]}]}, "non_text_content"),
    ({"instruction": "x", "output": None}, "wrong_type"),
    ({"instruction": 3, "output": "y"}, "wrong_type"),
    ({"text": "plain"}, "not_chat"),
])
def test_parse_errors(data, reason):
    with pytest.raises(ConversionError) as e:
        parse(data)
    assert e.value.reason == reason


def test_content_parts_are_joined():
    data = {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]}
    assert parse(data).turns[0].content == "ab"


@pytest.mark.parametrize("source", [ALPACA, SHAREGPT, SHAREGPT_RC, MESSAGES, PROMPT])
@pytest.mark.parametrize("to", ["alpaca", "messages", "sharegpt"])
def test_every_format_to_every_target_keeps_fields(source, to):
    out = convert(source, to)
    assert len(out) == 1
    consumed = {"instruction", "input", "output", "conversations", "conversation", "messages", "prompt", "completion"}
    for key, value in source.items():
        if key not in consumed:
            assert out[0][key] == value
    assert record_text(out[0]) == record_text(source) or to == "alpaca" or source is ALPACA


def test_alpaca_targets_exact():
    assert convert(ALPACA, "alpaca") == [ALPACA]
    assert convert(ALPACA, "messages") == [{"id": "a1", "meta": {"src": "x"}, "messages": [
        {"role": "user", "content": "Translate to French.\n\ncat"}, {"role": "assistant", "content": "chat"}]}]
    assert convert(ALPACA, "sharegpt")[0]["conversations"] == [
        {"from": "human", "value": "Translate to French.\n\ncat"}, {"from": "gpt", "value": "chat"}]
    assert convert(MESSAGES, "sharegpt")[0]["conversations"][0] == {"from": "system", "value": "Be brief."}


def test_multi_turn_to_alpaca_one_record_per_assistant_turn_with_context():
    out = convert(MULTI, "alpaca")
    assert [(r["instruction"], r["output"]) for r in out] == [("1+1?", "2"), ("times 3?", "6"), ("minus 1?", "5")]
    assert out[0]["input"] == "System: You are a calculator."
    assert out[2]["input"] == ("System: You are a calculator.\n\nUser: 1+1?\n\nAssistant: 2\n\n"
                               "User: times 3?\n\nAssistant: 6")
    assert all(r["id"] == "conv-7" and r["tags"] == ["math"] for r in out)
    # nothing truncated: every turn's text is in the last record
    for turn in MULTI["conversations"]:
        assert turn["value"] in out[-1]["input"] + out[-1]["instruction"] + out[-1]["output"]


def test_consecutive_user_turns_stay_in_context():
    data = {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"},
                         {"role": "assistant", "content": "c"}]}
    assert convert(data, "alpaca") == [{"instruction": "b", "input": "User: a", "output": "c"}]


@pytest.mark.parametrize("turns,reason", [
    ([("user", "q"), ("assistant", "a"), ("user", "unanswered")], "unanswered_turn"),
    ([("user", "q")], "no_assistant_turn"),
    ([("system", "s"), ("assistant", "a")], "no_user_turn"),
    ([("user", "q"), ("assistant", "a"), ("assistant", "b")], "consecutive_assistant_turns"),
    ([("user", "q"), ("system", "s"), ("assistant", "a")], "system_before_answer"),  # was named consecutive_...
])
def test_alpaca_refuses_to_lose_text(turns, reason):
    data = {"messages": [{"role": r, "content": c} for r, c in turns]}
    with pytest.raises(ConversionError) as e:
        convert(data, "alpaca")
    assert e.value.reason == reason
    assert convert(data, "messages")[0]["messages"] == data["messages"]  # other targets are fine


def test_field_conflict_is_reported():
    with pytest.raises(ConversionError) as e:
        convert({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
                 "output": "stray"}, "alpaca")
    assert e.value.reason == "field_conflict"


def test_system_field_becomes_the_alpaca_system_prompt_only_as_a_string():
    # a top-level "system" of a ShareGPT record (its system prompt) is the Alpaca record's system prompt;
    # not a string, it made the Alpaca output unreadable
    data = {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}], "system": "Be terse."}
    assert [t.role for t in parse(data).turns] == ["user", "assistant"]
    (out,) = convert(data, "alpaca")
    assert out == {"system": "Be terse.", "instruction": "q", "input": "", "output": "a"}
    assert [t.role for t in parse(out).turns] == ["system", "user", "assistant"]
    with pytest.raises(ConversionError) as e:
        convert({**data, "system": 3}, "alpaca")
    assert e.value.reason == "wrong_type"
    assert convert({**data, "system": 3}, "messages")[0]["system"] == 3  # the other targets keep it as a field


def test_round_trips():
    for data in (SHAREGPT, MULTI):
        msgs = convert(data, "messages")[0]
        assert convert(msgs, "sharegpt")[0] == {**{k: v for k, v in data.items() if k != "conversations"},
                                                "conversations": data["conversations"]}
    assert convert(convert(MESSAGES, "sharegpt")[0], "messages")[0] == MESSAGES
    single = {"messages": MESSAGES["messages"][1:], "k": 1}
    assert convert(convert(single, "alpaca")[0], "messages")[0] == single
    plain = {k: v for k, v in ALPACA.items() if k != "input"} | {"input": ""}
    assert convert(convert(plain, "sharegpt")[0], "alpaca")[0] == plain
    # with input: the input moves into the instruction (documented), nothing is lost
    back = convert(convert(ALPACA, "messages")[0], "alpaca")[0]
    assert back["instruction"] == "Translate to French.\n\ncat" and back["input"] == "" and back["output"] == "chat"


def test_turn_extras_kept():
    data = {"messages": [{"role": "user", "content": "q", "name": "bob"},
                         {"role": "assistant", "content": "a", "weight": 0}]}
    out = convert(data, "sharegpt")[0]["conversations"]
    assert out == [{"from": "human", "value": "q", "name": "bob"}, {"from": "gpt", "value": "a", "weight": 0}]
    assert convert(convert(data, "sharegpt")[0], "messages")[0] == data


def test_turn_extra_never_overwrites_role_or_content():
    # a ShareGPT turn that also carries "role": kept as an extra, it would replace the converted role
    data = {"conversations": [{"from": "human", "value": "q", "role": "moderator"}, {"from": "gpt", "value": "a"}]}
    with pytest.raises(ConversionError) as e:
        convert(data, "messages")
    assert e.value.reason == "field_conflict" and "turn 0" in str(e.value)
    assert convert(data, "sharegpt")[0] == data  # no clash there: the extra stays on its turn


def test_map_contents_maps_content_parts_and_the_parsed_key():
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": " a "}, {"type": "text", "text": "b "}]},
                          {"role": "assistant", "content": " c "}]}
    out = map_contents(parts, str.strip)
    assert out["messages"][0]["content"] == [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    assert parse(out).turns[0].content == "ab" and out["messages"][1]["content"] == "c"
    assert parts["messages"][0]["content"][0]["text"] == " a "  # the input is not changed
    # "conversations" that is not a list is an ordinary field (parse reads "conversation"): kept as it is
    both = {"conversations": "ab", "conversation": [{"from": "human", "value": " x "}]}
    assert map_contents(both, str.strip) == {"conversations": "ab", "conversation": [{"from": "human", "value": "x"}]}


def test_record_text_and_render():
    assert record_text({"text": "t", "messages": []}) == "t"
    assert record_text(MESSAGES) == "Be brief.\n\nHi\n\nHello!"
    assert record_text({"body": {"x": "deep"}}, "body.x") == "deep"
    assert render_turns(parse(PROMPT).turns) == "User: 2+2=\n\nAssistant: 4"
    with pytest.raises(ConversionError):
        record_text({"other": 1})


def test_convert_records_reports_file_and_line():
    records = [Record(MULTI, "c.jsonl", 1), Record({"text": "plain"}, "c.jsonl", 2),
               Record({"messages": [{"role": "user", "content": "q"}]}, "c.jsonl", 5), Record(PROMPT, "c.jsonl", 6)]
    log = ErrorLog()
    out = list(convert_records(records, "alpaca", errors=log))
    assert len(out) == 4 and out[-1]["id"] == 9
    assert [(s.source, s.line, s.reason) for s in log.samples] == [("c.jsonl", 2, "not_chat"),
                                                                   ("c.jsonl", 5, "no_assistant_turn")]
    with pytest.raises(DataError, match=r"^c\.jsonl:2: not_chat"):
        list(convert_records(records, "alpaca", errors=ErrorLog(strict=True)))


def test_unknown_target():
    with pytest.raises(ValueError, match="alpaca, messages, sharegpt"):
        convert(PROMPT, "chatml")


def test_alpaca_skips_weight_zero_turns_as_outputs():
    # a "weight": 0 assistant turn (not trained on, as SFT's loss mask has it) became an Alpaca output,
    # which SFT on the converted file then trained on
    data = {"conversations": [
        {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Old answer.", "weight": 0},
        {"from": "human", "value": "Again"}, {"from": "gpt", "value": "Good answer.", "weight": 1}]}
    out = convert(data, "alpaca")
    assert [(r["instruction"], r["output"]) for r in out] == [("Again", "Good answer.")]
    assert out[0]["input"] == "User: Hi\n\nAssistant: Old answer."  # still there, as context
    for w in (0, 0.0, False):  # every assistant turn untrained: nothing to train on, said by name
        data["conversations"][3]["weight"] = w
        with pytest.raises(ConversionError) as e:
            convert(data, "alpaca")
        assert e.value.reason == "no_trained_turn"
    for w in ("0", 0.5, None):  # not a zero weight (a string is not a number): trained, as SFT has it
        data["conversations"][3]["weight"] = w
        assert [r["output"] for r in convert(data, "alpaca")] == ["Good answer."]
    assert len(convert(data, "messages")) == 1  # other targets keep the turns and their weights


def test_alpaca_weight_zero_turns_agree_with_sft_mask():
    from fastlm.data.chat import parse, untrained
    from fastlm.tokenizer import chat_template

    turns = parse({"messages": [{"role": "user", "content": "q"},
                                {"role": "assistant", "content": "a", "weight": 0}]}).turns
    assert untrained(turns[1]) and not untrained(turns[0])
    assert chat_template.untrained is untrained  # one rule for the mask and the conversion
