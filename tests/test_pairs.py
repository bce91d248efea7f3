"""Preference pairs: record formats, chat-template rendering and masks, malformed records, truncation,
held-out split, batches and the resumable pair stream."""
import json

import pytest

torch = pytest.importorskip("torch")

from fastlm.data.records import ErrorLog  # noqa: E402
from fastlm.posttrain.pairs import (Pair, PairStream, collate_pairs, fit_pair, parse_pair, read_pairs,  # noqa: E402
                                    render_pair, split_pairs, task_pairs)
from fastlm.tokenizer import Tokenizer  # noqa: E402
from fastlm.tokenizer.chat_template import CHAT_SPECIALS  # noqa: E402


def byte_tok():
    return Tokenizer([bytes([b]) for b in range(256)],
                     special_tokens={s: 256 + i for i, s in enumerate(CHAT_SPECIALS)})


TOK = byte_tok()
STANDARD = {"prompt": "2+2?", "chosen": "4", "rejected": "five"}
CONVERSATIONAL = {"prompt": [{"role": "user", "content": "2+2?"}],
                  "chosen": [{"role": "assistant", "content": "4"}],
                  "rejected": [{"role": "assistant", "content": "five"}]}
IMPLICIT = {"chosen": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}],
            "rejected": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "five"}]}


def test_formats_render_identically():
    pairs = [render_pair(TOK, r) for r in (STANDARD, CONVERSATIONAL, IMPLICIT)]
    for p in pairs[1:]:
        assert (p.chosen, p.rejected, p.chosen_mask, p.rejected_mask, p.prompt_len) == \
            (pairs[0].chosen, pairs[0].rejected, pairs[0].chosen_mask, pairs[0].rejected_mask, pairs[0].prompt_len)
    p = pairs[0]
    assert TOK.decode(p.chosen) == "<|bos|><|user_start|>2+2?<|user_end|><|assistant_start|>4<|assistant_end|>"
    assert TOK.decode(p.rejected[p.prompt_len:]) == "five<|assistant_end|>"
    assert p.chosen[:p.prompt_len] == p.rejected[:p.prompt_len]
    assert p.chosen_mask == [0] * p.prompt_len + [1, 1]
    assert p.rejected_mask == [0] * p.prompt_len + [1] * 5


def test_multi_turn_prompt_and_system_are_masked():
    rec = {"prompt": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
                      {"role": "assistant", "content": "hello"}, {"role": "user", "content": "2+2?"}],
           "chosen": [{"role": "assistant", "content": "4"}], "rejected": [{"role": "assistant", "content": "5"}]}
    p = render_pair(TOK, rec)
    assert sum(p.chosen_mask) == 2  # "4" and <|assistant_end|>: the earlier assistant turn is prompt
    assert TOK.decode(p.chosen[:p.prompt_len]).endswith("2+2?<|user_end|><|assistant_start|>")


def test_collate_labels_only_on_responses():
    pairs = [render_pair(TOK, STANDARD), render_pair(TOK, {"prompt": "a longer prompt", "chosen": "x", "rejected": "yz"})]
    b = collate_pairs(pairs, pad_id=0)
    ids, labels, lengths = b["input_ids"], b["labels"], b["lengths"]
    assert ids.shape[0] == 4
    rows = [pairs[0].chosen, pairs[1].chosen, pairs[0].rejected, pairs[1].rejected]
    starts = [pairs[0].prompt_len, pairs[1].prompt_len] * 2
    assert lengths.tolist() == [len(r) for r in rows]
    for i, (row, start) in enumerate(zip(rows, starts)):
        want = [-100] * ids.shape[1]
        for t in range(start - 1, len(row) - 1):  # position t predicts row[t + 1], a response token
            want[t] = row[t + 1]
        assert labels[i].tolist() == want, i
        assert ids[i, :len(row)].tolist() == row


def test_malformed_records_counted_with_file_and_line(tmp_path):
    path = tmp_path / "prefs.jsonl"
    lines = [json.dumps(STANDARD), "{not json", json.dumps({"prompt": "x", "chosen": "y"}),
             json.dumps({"prompt": "x", "chosen": ["y"], "rejected": "z"}),
             json.dumps({"prompt": [{"role": "assistant", "content": "x"}], "chosen": CONVERSATIONAL["chosen"],
                         "rejected": CONVERSATIONAL["rejected"]}),
             "", json.dumps(CONVERSATIONAL), json.dumps(IMPLICIT)]
    path.write_text("\n".join(lines) + "\n")
    errors, counts = ErrorLog(), {}
    pairs = read_pairs([str(path)], TOK, seq_len=64, errors=errors, counts=counts)
    assert len(pairs) == 3 and counts["read"] == 6
    assert [p.where.rsplit(":", 1)[1] for p in pairs] == ["1", "7", "8"]
    assert errors.total == 4
    assert [(b.line, b.reason) for b in errors.samples] == [(2, "bad_json"), (3, "missing_field"),
                                                            (4, "wrong_type"), (5, "bad_prompt")]
    assert all(b.source.endswith("prefs.jsonl") for b in errors.samples)
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{}\n")
    with pytest.raises(ValueError, match="no usable preference pairs"):
        read_pairs([str(bad)], TOK, seq_len=64, errors=ErrorLog())


def test_no_usable_pairs_message_counts_reasons_and_names_records(tmp_path):
    """Under --quiet the skipped-records report is not printed: the error itself gives the counts by reason
    and the first records (file:line), on one line."""
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{not json\n{"prompt": "p", "chosen": "a"}\n{"prompt": "p", "chosen": "a", "rejected": "a"}\n')
    with pytest.raises(ValueError) as e:
        read_pairs([str(bad)], TOK, seq_len=64, errors=ErrorLog())
    msg = str(e.value)
    assert "\n" not in msg and "(parsed 2, malformed 3, 1 bad_json, 1 identical_responses, 1 missing_field," in msg
    assert f"e.g. {bad}:1: bad_json" in msg and f"e.g. {bad}:2: missing_field" in msg


def test_json_array_and_parquet(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps([STANDARD, CONVERSATIONAL]))
    assert len(read_pairs([str(tmp_path / "a.json")], TOK, seq_len=64, errors=ErrorLog(strict=True))) == 2
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq
    pq.write_table(pa.Table.from_pylist([STANDARD, STANDARD]), str(tmp_path / "b.parquet"))
    assert len(read_pairs([str(tmp_path / "b.parquet")], TOK, seq_len=64, errors=ErrorLog(strict=True))) == 2


def test_too_long_pairs_are_cut_or_dropped():
    p = render_pair(TOK, {"prompt": "hi", "chosen": "a" * 30, "rejected": "b"})
    cut, why = fit_pair(p, p.prompt_len + 5)
    assert why == "truncated" and len(cut.chosen) == p.prompt_len + 5 and cut.rejected == p.rejected
    assert fit_pair(p, p.prompt_len)[1] == "too_long" and fit_pair(p, p.prompt_len)[0] is None
    assert fit_pair(p, 200) == (p, "")


def test_parse_errors():
    with pytest.raises(ValueError, match="missing_field"):
        parse_pair({"chosen": "a", "rejected": "b"})
    with pytest.raises(ValueError, match="bad_response"):
        parse_pair({"prompt": CONVERSATIONAL["prompt"], "chosen": CONVERSATIONAL["prompt"],
                    "rejected": CONVERSATIONAL["rejected"]})
    # chosen == rejected: no preference (DPO: a constant log 2, reward: a wrong accuracy); was kept
    for same in ({"prompt": "q", "chosen": "a", "rejected": "a"},
                 {"prompt": CONVERSATIONAL["prompt"], "chosen": CONVERSATIONAL["chosen"],
                  "rejected": CONVERSATIONAL["chosen"]},
                 {"chosen": IMPLICIT["chosen"], "rejected": IMPLICIT["chosen"]}):
        with pytest.raises(ValueError, match="identical_responses"):
            parse_pair(same)


def test_split_is_seeded_and_disjoint():
    pairs = [Pair([i], [i], [0], [0], 0) for i in range(50)]
    tr, va = split_pairs(pairs, 0.1, seed=3)
    assert len(va) == 5 and len(tr) == 45
    assert {p.chosen[0] for p in tr}.isdisjoint({p.chosen[0] for p in va})
    assert split_pairs(pairs, 0.1, seed=3)[1] == va
    assert split_pairs(pairs, 0.1, seed=4)[1] != va
    assert len(split_pairs(pairs[:3], 0.01, seed=0)[1]) == 1


def test_stream_resumes_and_shards_by_rank():
    pairs = [Pair([i], [i], [0], [0], 0) for i in range(7)]
    a = PairStream(pairs, seed=1, rank=0, world=1)
    seen = [p.chosen[0] for _ in range(5) for p in a.next_micro(4)]  # crosses epochs
    assert sorted(seen[:7]) == list(range(7))
    b = PairStream(pairs, seed=1, rank=0, world=1)
    b.next_micro(4), b.next_micro(4)
    c = PairStream(pairs, seed=1, rank=0, world=1)
    c.load_state_dict(json.loads(json.dumps(b.state_dict())))
    assert [p.chosen[0] for p in c.next_micro(4)] == seen[8:12]
    r0, r1 = (PairStream(pairs, seed=1, rank=r, world=2) for r in (0, 1))
    assert [p.chosen[0] for p in r0.next_micro(4) + r1.next_micro(4)] == seen[:4]


def test_task_pairs_chosen_is_the_answer():
    from fastlm.posttrain.tasks import get_task, is_correct
    pairs = task_pairs(["add", "reverse"], "val", 5, 0, TOK, seq_len=256)
    assert len(pairs) == 10
    answers = [e for n in ("add", "reverse") for e in get_task(n).examples("val", 5, 0)]
    by_prompt = {e.prompt: e for e in answers}
    for p in pairs:
        prompt = TOK.decode(p.chosen[:p.prompt_len]).split("<|user_start|>")[1].split("<|user_end|>")[0]
        ex = by_prompt[prompt]
        chosen = TOK.decode(p.chosen[p.prompt_len:]).removesuffix("<|assistant_end|>")
        rejected = TOK.decode(p.rejected[p.prompt_len:]).removesuffix("<|assistant_end|>")
        assert is_correct(ex, chosen) and not is_correct(ex, rejected)
