"""Built-in post-training tasks: determinism, disjoint splits, answers checked independently, preference
pairs, rewards on hand cases, tokenization, and greedy exact-match evaluation."""
import random

import pytest
import torch

from fastlm.models import GPT, GPTConfig
from fastlm.models.generate import generate
from fastlm.posttrain import tasks as T
from fastlm.posttrain.tasks import TASKS, Example, exact_match, get_task
from fastlm.tokenizer import Tokenizer
from fastlm.tokenizer.chat_template import CHAT_SPECIALS, render_conversation, render_prompt

torch.set_num_threads(1)
NAMES = list(TASKS)


def byte_tok():
    return Tokenizer([bytes([b]) for b in range(256)],
                     special_tokens={s: 256 + i for i, s in enumerate(CHAT_SPECIALS)})


def check_answer(name: str, inp: str) -> str:
    """The answer, computed without the task code."""
    if name == "add":
        a, b = inp.split(" + ")
        return " ".join(str(int(a.replace(" ", "")) + int(b.replace(" ", ""))))
    words = inp.split(" ")
    return " " + " ".join({"copy": words, "reverse": list(reversed(words)), "sort": sorted(words)}[name])


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_and_seeded(name):
    task = get_task(name)
    a, b = task.examples("train", 50, seed=3), task.examples("train", 50, seed=3)
    assert a == b
    assert [e.prompt for e in task.examples("train", 50, seed=4)] != [e.prompt for e in a]
    assert task.examples("val", 20, seed=1)[:10] == task.examples("val", 10, seed=1)


@pytest.mark.parametrize("name", NAMES)
def test_splits_disjoint_and_distinct(name):
    task = get_task(name)
    train = {e.prompt for e in task.examples("train", 2000, seed=0)}
    val = [e.prompt for s in (0, 1, 2) for e in task.examples("val", 100, seed=s)]
    assert len(train) == 2000 and not train & set(val)
    assert len(set(val[:100])) == 100


@pytest.mark.parametrize("name", NAMES)
def test_answers_and_meta(name):
    task = get_task(name)
    for ex in task.examples("train", 300, seed=0) + task.examples("val", 50, seed=0):
        inp = ex.meta["input"]
        assert ex.answer == check_answer(name, inp) == ex.meta["answer"]
        assert ex.prompt == ex.meta["instruction"] + " " + inp and ex.prompt.count("\n") == 0
        assert ex.meta["task"] == name
        assert task.is_correct(ex, ex.answer) and task.reward(ex.meta, ex.answer) == 1.0
        if name == "add":
            a, b = inp.split(" + ")
            assert len(a) == len(b) == 3 and 0 <= int(a.replace(" ", "")) <= 99 >= int(b.replace(" ", ""))
        else:
            words = inp.split()
            assert 2 <= len(words) <= 5 and len(set(words)) == len(words) and set(words) <= set(T.WORDS)


@pytest.mark.parametrize("name", NAMES)
def test_preference_pairs(name):
    rng = random.Random(0)
    for ex in get_task(name).examples("train", 200, seed=0):
        pair = T.preference_pair(ex, rng)
        assert pair["prompt"] == ex.prompt and pair["chosen"] == ex.answer
        assert pair["rejected"] != pair["chosen"]
        assert not T.is_correct(ex, pair["rejected"])
        assert 0.0 <= T.reward(ex, pair["rejected"]) < 1.0
        if name != "add":  # plausible: same length, words from the vocabulary
            assert len(pair["rejected"].split()) == len(ex.answer.split())
            assert set(pair["rejected"].split()) <= set(T.WORDS)


@pytest.mark.parametrize("meta,response,reward,correct", [
    ({"task": "reverse", "answer": "one two three"}, "one two three", 1.0, True),
    ({"task": "reverse", "answer": "one two three"}, "  one  two\nthree ", 1.0, True),
    ({"task": "reverse", "answer": "one two three"}, "one three two", 1 / 3, False),
    ({"task": "reverse", "answer": "one two three"}, "one two three four", 3 / 4, False),  # no stop
    ({"task": "reverse", "answer": "one two three"}, "One two three", 2 / 3, False),  # case counts
    ({"task": "copy", "answer": "key set"}, "", 0.0, False),
    ({"task": "sort", "answer": "end key"}, "key end", 0.0, False),
    ({"task": "add", "answer": "4 2"}, "4 2", 1.0, True),
    ({"task": "add", "answer": "4 2"}, "42", 1.0, True),
    ({"task": "add", "answer": "4 2"}, "4 3", 0.5, False),
    ({"task": "add", "answer": "1 0 2"}, "2", 0.0, False),  # aligned from the left
    ({"task": "add", "answer": "1 0 2"}, "1 0 2 ok", 3 / 5, False),
])
def test_reward_hand_cases(meta, response, reward, correct):
    assert T.reward(meta, response) == pytest.approx(reward)
    assert T.is_correct(meta, response) is correct


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="unknown task 'nope'.*copy"):
        get_task("nope")
    with pytest.raises(ValueError, match="split"):
        get_task("copy").examples("test", 3)
    with pytest.raises(ValueError, match="only .* distinct"):
        get_task("add").examples("val", 5000)
    with pytest.raises(ValueError, match="'task'"):
        T.reward({"answer": "x"}, "x")


def test_sft_record_renders_to_prompt_and_answer():
    tok = byte_tok()
    for name in NAMES:
        ex = get_task(name).examples("val", 1)[0]
        rec = T.sft_record(ex)
        assert set(rec) == {"instruction", "input", "output"}
        ids, mask = render_conversation(tok, rec)
        assert tok.decode([i for i, m in zip(ids, mask) if m]) == ex.answer + "<|assistant_end|>"
        user = render_prompt(tok, {"messages": [{"role": "user", "content": ex.prompt}]})
        assert ids[:len(user)] == user


def test_answers_tokenize_as_intended():
    from corpora import PYDOC
    tok = Tokenizer.train_from_iterator([PYDOC[k] for k in sorted(PYDOC)][:60], 400)
    for name in NAMES:
        for ex in get_task(name).examples("train", 30):
            for text in (ex.prompt, ex.answer):
                assert tok.decode(tok.encode_ordinary(text)) == text
    for ex in get_task("copy").examples("train", 30):  # the words' tokens are the same in the answer
        prompt = tok.encode_ordinary(ex.prompt)
        answer = tok.encode_ordinary(ex.answer)
        assert prompt[-len(answer):] == answer
    pieces = [tok.decode([i]) for i in tok.encode_ordinary(T.spaced(1905))]
    assert [p for p in pieces if p.strip()] == ["1", "9", "0", "5"]  # one token per digit


class Oracle(torch.nn.Module):
    """A stand-in GPT that answers each known prompt with a scripted reply, one id per step."""

    def __init__(self, tok, replies: dict[tuple, list[int]], vocab: int):
        super().__init__()
        self.config = GPTConfig.named("tiny", vocab_size=vocab, max_seq_len=256)
        self.replies, self.vocab, self.w = replies, vocab, torch.nn.Parameter(torch.zeros(1))
        self.lm_head = torch.nn.Identity()

    def hidden_states(self, x, *, kernels, kv_cache):
        if kv_cache.pos == 0:
            self.rows, self.start = [tuple(r) for r in x.tolist()], x.shape[1]
        kv_cache.pos += x.shape[1]
        step = kv_cache.pos - self.start
        out = torch.zeros(x.shape[0], x.shape[1], self.vocab)
        for b, row in enumerate(self.rows):
            reply = self.replies[row]
            out[b, -1, reply[min(step, len(reply) - 1)]] = 1.0
        return out


def test_exact_match_scores_scripted_replies():
    tok = byte_tok()
    eos = tok.special_id("<|assistant_end|>")
    exs = T.examples_for(["copy", "reverse", "add"], "val", 7)
    replies, want = {}, []
    for i, ex in enumerate(exs):
        text = ex.answer if i % 3 else T.preference_pair(ex, random.Random(i))["rejected"]
        if i % 5 == 4:
            text += " extra"  # does not stop after the answer: wrong
        want.append(i % 3 != 0 and i % 5 != 4)
        prompt = render_prompt(tok, {"messages": [{"role": "user", "content": ex.prompt}]})
        replies[tuple(prompt)] = tok.encode_ordinary(text) + [eos, 65, 66]  # ids after eos ignored
    model = Oracle(tok, replies, tok.n_vocab)
    for batch in (1, 4, 32):
        r = exact_match(model, tok, exs, max_new_tokens=40, batch=batch, n_samples=2)
        assert r["n"] == len(exs) and r["correct"] == sum(want)
        assert r["accuracy"] == pytest.approx(sum(want) / len(exs))
        assert set(r["per_task"]) == {"copy", "reverse", "add"}
        assert r["samples"][1]["response"] == exs[1].answer and r["samples"][1]["correct"]
        assert len(r["samples"]) == 2
    assert r["reward"] == pytest.approx(sum(T.reward(e, s) for e, s in zip(
        exs, [tok.decode(replies[tuple(render_prompt(tok, {"messages": [{"role": "user", "content": e.prompt}]}))][:-3])
              for e in exs])) / len(exs))


def test_exact_match_batched_equals_generate():
    tok = byte_tok()
    torch.manual_seed(0)
    model = GPT(GPTConfig.named("tiny", vocab_size=tok.n_vocab, n_layer=1, d_model=32, max_seq_len=256))
    eos = tok.special_id("<|assistant_end|>")
    exs = T.examples_for(["copy", "sort"], "val", 4)
    r = exact_match(model, tok, exs, max_new_tokens=6, batch=3, n_samples=len(exs))
    for ex, s in zip(exs, r["samples"]):
        prompt = render_prompt(tok, {"messages": [{"role": "user", "content": ex.prompt}]})
        ids = list(generate(model, prompt, max_new_tokens=6, temperature=0, eos_id=eos))
        assert s["response"] == tok.decode([i for i in ids if i != eos])
    assert model.training


def test_exact_match_without_task_meta():
    tok = byte_tok()
    model = Oracle(tok, {}, tok.n_vocab)
    model.replies = {tuple(render_prompt(tok, {"messages": [{"role": "user", "content": "hi"}]})):
                     tok.encode_ordinary(" yo ") + [tok.special_id("<|assistant_end|>")]}
    r = exact_match(model, tok, [Example("hi", "yo")], max_new_tokens=8)
    assert r["accuracy"] == 1.0 and r["per_task"][""]["n"] == 1


# ---------------------------------------------------------------------------------- fastlm eval --task

@pytest.fixture(scope="module")
def chat_run(tmp_path_factory):
    from fastlm.config import from_dict
    from fastlm.models import config_to_dict
    from fastlm.train.checkpoint import save_checkpoint
    from fastlm.train.config import TrainConfig
    root = tmp_path_factory.mktemp("run")
    tok = byte_tok()
    tok.save(str(root / "tokenizer.fastlm"))
    torch.manual_seed(0)
    model = GPT(GPTConfig.named("tiny", vocab_size=tok.n_vocab, n_layer=1, d_model=32))
    cfg = from_dict(TrainConfig, {"task": "sft", "model": {"kernels": "torch"}})
    save_checkpoint(str(root / "checkpoints"), 5, model_state=model.state_dict(), optimizer_state=None,
                    meta={"model_config": config_to_dict(model.config), "train_config": cfg.to_dict()},
                    tokenizer_path=str(root / "tokenizer.fastlm"))
    return str(root), model.eval(), tok


def test_cli_eval_task(chat_run, tmp_path, capsys):
    import json
    from fastlm.cli.main import main
    root, model, tok = chat_run
    out = str(tmp_path / "em.json")
    assert main(["eval", "--ckpt", root, "--task", "copy,add", "--examples", "6", "--max-new-tokens",
                 "5", "--seed", "2", "--json", out]) == 0
    text = capsys.readouterr().out
    assert "copy" in text and "add" in text and "mean" in text
    doc = json.load(open(out))
    assert doc["task"] == ["copy", "add"] and doc["step"] == 5 and doc["examples"] == 6
    for name in ("copy", "add"):
        want = exact_match(model, tok, get_task(name).examples("val", 6, 2), max_new_tokens=5,
                           kernels="torch")
        got = doc["tasks"][name]
        assert got["n"] == 6 and got["accuracy"] == want["accuracy"]
        assert got["reward"] == pytest.approx(want["reward"])
        assert [s["response"] for s in got["samples"]] == [s["response"] for s in want["samples"][:3]]
    assert doc["accuracy"] == pytest.approx((doc["tasks"]["copy"]["accuracy"] + doc["tasks"]["add"]["accuracy"]) / 2)


@pytest.mark.parametrize("argv,needle", [
    (["--task", "nope"], "unknown task 'nope'"),
    (["--task", "copy", "some.txt"], "either DATA"),
    ([], "nothing to evaluate"),
    (["--task", "copy", "--examples", "0"], "--examples"),
])
def test_cli_eval_task_errors(chat_run, argv, needle, capsys):
    from fastlm.cli.main import main
    assert main(["eval", "--ckpt", chat_run[0], *argv]) == 2
    assert needle in capsys.readouterr().err
