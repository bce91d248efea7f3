"""Built-in tasks with verifiable answers (copy, reverse, sort, add): SFT records, preference pairs,
rewards and greedy exact-match evaluation, small enough for a tiny model to learn on a CPU.

Every task draws a short problem and phrases it as one instruction line (``prompt``, the user turn;
the Alpaca record puts it all in ``instruction``, ``input`` empty) with one right ``answer``:

========  ====================================================  ===============  ==================
task      prompt                                                answer           problems
========  ====================================================  ===============  ==================
copy      Repeat these words exactly: key one time               " key one time"  2-5 distinct words
reverse   Reverse the order of these words: key one time         " time one key"  from `WORDS`
sort      Sort these words in alphabetical order: time key one   " key one time"
add       Add the two numbers (digits spaced, two per number):   "5 7"            00..99 + 00..99
          0 3 + 5 4
========  ====================================================  ===============  ==================

Token forms: a tiny model should see one token per unit, always the same one. Words come from
`WORDS`, 14 short English words that byte-level BPEs trained on pydoc + Shakespeare (4096 ids) keep
as one token with a leading space (without it, several are 2 tokens). Word answers start with a
space (``lead``): then every listed word, in the prompt (after the colon) and in the answer, is the
" key" form, and copying is a plain induction (find the previous word in the prompt, emit its
neighbour). Tried and dropped: answers without the space (the first word is then "key", another
token or two, and reverse/sort must learn that mapping: every reverse miss was on the first word);
one word per line (one form, but the lookup is then two tokens back; 400 SFT steps from a 300-step
clm base: copy 1%, reverse 1%, against 17% and 5% spaced). Measured (tiny GPT, 2 layers, d 128;
AdamW lr 3e-3, 32 examples/step, SFT on copy+reverse+add from that base, 1000 steps = 2 min on one
CPU thread): held-out exact match copy 62%, reverse 19%, add 3% (base: 0%); from scratch, 600
steps are not enough for any task.

Scoring splits on whitespace, so the leading space never matters there. Numbers are written with a
space between digits ("3 7" is 37): the GPT-4 split pattern cuts digit runs into chunks of up to 3
that the BPE merges unevenly ("12" one token, "146" -> "14" "6"); spaced, every digit is its own
token. Operands are zero-padded to two digits ("0 3") so each digit has a fixed place; the sum is
not padded.

Splits. A problem belongs to "val" when a hash of (task, prompt) falls in the first `VAL_SHARE` of
the hash range, else to "train": fixed for every seed and size, so no val prompt ever appears in
train. ``examples(split, n, seed)`` returns n distinct problems of that split; ``size(split)`` says
how many there are (add: 993 val, 9007 train; copy, reverse, sort: ~26,500 val of 266,630), and a
larger n is refused at once. Problems are drawn at random until n distinct ones are found; past
half of the split, where most draws would repeat, the n are sampled from the split's list instead.

Scoring (`reward`, `is_correct`). The response is the text the model generated after
``<|assistant_start|>``, up to (not including) ``<|assistant_end|>``. It is split on whitespace
into items (words; for ``add``, the digits with all whitespace removed, so "42" and "4 2" are both
42). Text after the answer is *not* ignored: an answer that does not stop is wrong. ``is_correct``:
the items equal the answer's, case-sensitive. ``reward``: 1.0 when correct, else partial credit =
the share of positions right, (items equal at the same position) / max(len(answer), len(response))
(aligned from the left, so trailing text costs only its length), so a near miss earns more than
noise and RL has a gradient; always < 1 unless correct.
"""

from __future__ import annotations

import hashlib
import itertools
import random
import re
from dataclasses import dataclass, field
from typing import Any, Iterator, Union

WORDS = ("end", "get", "hand", "key", "list", "name", "one", "run", "set", "three", "time", "two",
         "type", "word")
VAL_SHARE = 0.1  # share of each task's problems held out for evaluation
MIN_WORDS, MAX_WORDS = 2, 5
SEP = " "  # between listed words
MAX_OPERAND = 99  # add: operands 0..99 (1-2 digits), sums 0..198


@dataclass
class Example:
    """One problem: the user ``prompt``, the right ``answer``, and ``meta`` (JSON-safe: task name,
    instruction, input, answer) from which `reward` scores a response without the Example."""
    prompt: str
    answer: str
    meta: dict = field(default_factory=dict)


def spaced(n: int, width: int = 1) -> str:
    """A number with one space between digits (one token per digit), zero-padded to ``width``.

    >>> spaced(105), spaced(7, width=2)
    ('1 0 5', '0 7')
    """
    return " ".join(str(n).zfill(width))


def _is_val(task: str, prompt: str) -> bool:
    h = int.from_bytes(hashlib.sha256(f"{task}\0{prompt}".encode()).digest()[:8], "big")
    return h < VAL_SHARE * 2 ** 64


class Task:
    """A built-in task: subclasses set ``name``, ``instruction`` and draw/solve/wrong-answer rules."""
    name = ""
    instruction = ""
    lead = ""  # text before every answer (" " for word lists: see the module docstring)
    _sizes: dict[str, int] | None = None  # problems per split, counted by `size` when first asked

    def _draw(self, rng: random.Random) -> str:
        """A random input text."""
        raise NotImplementedError

    def _inputs(self) -> Iterator[str]:
        """Every input text `_draw` can return, once each, in a fixed order."""
        raise NotImplementedError

    def solve(self, inp: str) -> str:
        """The right answer to an input text."""
        raise NotImplementedError

    def _wrong(self, inp: str, answer: str, rng: random.Random) -> str:
        """A plausible wrong answer (never equal to ``answer`` after `items`)."""
        raise NotImplementedError

    def items(self, text: str) -> list[str]:
        """The units that `reward` compares: whitespace-separated words."""
        return text.split()

    def make(self, inp: str) -> Example:
        """The Example for an input text."""
        answer = self.lead + self.solve(inp)
        return Example(self._prompt(inp), answer, {"task": self.name, "instruction": self.instruction,
                                                   "input": inp, "answer": answer})

    def _prompt(self, inp: str) -> str:
        return f"{self.instruction} {inp}"

    def _split_inputs(self, split: str) -> Iterator[str]:
        want_val = split == "val"
        return (inp for inp in self._inputs() if _is_val(self.name, self._prompt(inp)) == want_val)

    def size(self, split: str) -> int:
        """How many distinct problems ``split`` holds (counted once: ~0.3 s for a word task).

        >>> get_task("add").size("val") + get_task("add").size("train")
        10000
        """
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        if self._sizes is None:
            is_val = [_is_val(self.name, self._prompt(inp)) for inp in self._inputs()]
            self._sizes = {"val": sum(is_val), "train": len(is_val) - sum(is_val)}
        return self._sizes[split]

    def examples(self, split: str, n: int, seed: int = 0) -> list[Example]:
        """``n`` distinct problems of ``split`` ("train" or "val"), the same for the same seed.

        >>> [e.answer.split() for e in get_task("reverse").examples("val", 2, seed=0)]
        [['key', 'end', 'hand', 'run', 'one'], ['end', 'two', 'set', 'hand', 'run']]
        """
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        if n > self.size(split):
            raise ValueError(f"task {self.name!r} has only {self.size(split)} distinct {split} problems, "
                             f"asked for n={n}; ask for fewer")
        rng = random.Random(f"{self.name}:{split}:{seed}")
        if 2 * n > self.size(split):  # drawing until n distinct would take ever more draws per new one
            return [self.make(inp) for inp in rng.sample(list(self._split_inputs(split)), n)]
        want_val, seen, out = split == "val", set(), []
        for _ in range(200 * n + 1000):
            if len(out) == n:
                break
            inp = self._draw(rng)
            ex = self.make(inp)
            if ex.prompt in seen or _is_val(self.name, ex.prompt) != want_val:
                continue
            seen.add(ex.prompt)
            out.append(ex)
        if len(out) < n:
            raise ValueError(f"task {self.name!r}: found only {len(out)} distinct {split} problems, "
                             f"asked for n={n}; ask for fewer")
        return out

    def sft_record(self, ex: Example) -> dict[str, str]:
        """The Alpaca record: {"instruction": the whole prompt, "input": "", "output"}."""
        return {"instruction": ex.prompt, "input": "", "output": ex.answer}

    def preference_pair(self, ex: Example, rng: random.Random) -> dict[str, str]:
        """{"prompt", "chosen": the answer, "rejected": a plausible wrong answer}."""
        return {"prompt": ex.prompt, "chosen": ex.answer,
                "rejected": self.lead + self._wrong(ex.meta["input"], ex.answer, rng)}

    def reward(self, ex_or_meta: Union[Example, dict], response: str) -> float:
        """1.0 when correct, else the share of positions right (see the module docstring)."""
        want = self.items(_meta(ex_or_meta)["answer"])
        got = self.items(response)
        if got == want:
            return 1.0
        hits = sum(a == b for a, b in zip(want, got))
        return hits / max(len(want), len(got))

    def is_correct(self, ex_or_meta: Union[Example, dict], response: str) -> bool:
        """The response's items equal the answer's."""
        return self.items(response) == self.items(_meta(ex_or_meta)["answer"])


class _WordTask(Task):
    lead = " "  # every word of the answer spaced: " key", one token form (module docstring)
    def _draw(self, rng: random.Random) -> str:
        return SEP.join(rng.sample(WORDS, rng.randint(MIN_WORDS, MAX_WORDS)))

    def _inputs(self) -> Iterator[str]:
        for k in range(MIN_WORDS, MAX_WORDS + 1):
            yield from map(SEP.join, itertools.permutations(WORDS, k))

    def _wrong(self, inp: str, answer: str, rng: random.Random) -> str:
        words = answer.split()
        i = rng.randrange(len(words) - 1)
        if rng.random() < 0.5:  # two neighbours swapped (distinct words: always a change)
            words[i], words[i + 1] = words[i + 1], words[i]
        else:  # one word replaced by a word not in the list
            words[rng.randrange(len(words))] = rng.choice([w for w in WORDS if w not in words])
        return SEP.join(words)


class CopyTask(_WordTask):
    name = "copy"
    instruction = "Repeat these words exactly:"

    def solve(self, inp: str) -> str:
        return SEP.join(inp.split())


class ReverseTask(_WordTask):
    name = "reverse"
    instruction = "Reverse the order of these words:"

    def solve(self, inp: str) -> str:
        return SEP.join(inp.split()[::-1])

    def _wrong(self, inp: str, answer: str, rng: random.Random) -> str:
        if rng.random() < 1 / 3:
            return SEP.join(inp.split())  # copied instead of reversed
        return super()._wrong(inp, answer, rng)


class SortTask(_WordTask):
    name = "sort"
    instruction = "Sort these words in alphabetical order:"

    def solve(self, inp: str) -> str:
        return SEP.join(sorted(inp.split()))


class AddTask(Task):
    name = "add"
    instruction = "Add the two numbers (digits spaced, two per number):"

    def _draw(self, rng: random.Random) -> str:
        width = len(str(MAX_OPERAND))  # fixed-width operands: digit i of each always at one place
        return f"{spaced(rng.randint(0, MAX_OPERAND), width)} + {spaced(rng.randint(0, MAX_OPERAND), width)}"

    def _inputs(self) -> Iterator[str]:
        width = len(str(MAX_OPERAND))
        for a, b in itertools.product(range(MAX_OPERAND + 1), repeat=2):
            yield f"{spaced(a, width)} + {spaced(b, width)}"

    def solve(self, inp: str) -> str:
        a, b = inp.split("+")
        return spaced(int(a.replace(" ", "")) + int(b.replace(" ", "")))

    def items(self, text: str) -> list[str]:
        return list(re.sub(r"\s+", "", text))

    def _wrong(self, inp: str, answer: str, rng: random.Random) -> str:
        total = int(answer.replace(" ", ""))
        options = [total + d for d in (-10, -1, 1, 10) if total + d >= 0]  # off by one in a digit
        return spaced(rng.choice(options))


TASKS: dict[str, Task] = {t.name: t for t in (CopyTask(), ReverseTask(), SortTask(), AddTask())}


def get_task(name: str) -> Task:
    """The built-in task called ``name``.

    >>> get_task("add").make("1 2 + 3 9").answer
    '5 1'
    """
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; built-in tasks: {', '.join(TASKS)}") from None


def _meta(ex_or_meta: Union[Example, dict]) -> dict:
    meta = ex_or_meta.meta if isinstance(ex_or_meta, Example) else ex_or_meta
    if not isinstance(meta, dict) or "answer" not in meta:
        raise ValueError(f"expected an Example or its meta dict with an 'answer', got {ex_or_meta!r}")
    return meta


def _task_of(ex_or_meta: Union[Example, dict]) -> Task:
    meta = _meta(ex_or_meta)
    if "task" not in meta:
        raise ValueError(f"meta has no 'task' name: {meta!r}")
    return get_task(meta["task"])


def examples_for(names: list[str], split: str, n: int, seed: int = 0) -> list[Example]:
    """``n`` examples of each named task, tasks interleaved (one of each in turn).

    >>> [e.meta["task"] for e in examples_for(["copy", "add"], "train", 2)]
    ['copy', 'add', 'copy', 'add']
    """
    per_task = [get_task(name).examples(split, n, seed) for name in names]
    return [ex for group in zip(*per_task) for ex in group]


def sft_record(ex: Example) -> dict[str, str]:
    """The Alpaca record of an Example: ``instruction`` = ``ex.prompt``, ``input`` empty, ``output``.

    >>> rec = sft_record(get_task("reverse").make(SEP.join(["one", "two"])))
    >>> rec["instruction"], rec["output"].split()
    ('Reverse the order of these words: one two', ['two', 'one'])
    """
    return _task_of(ex).sft_record(ex)


def preference_pair(ex: Example, rng: random.Random) -> dict[str, str]:
    """{"prompt", "chosen", "rejected"} with a plausible wrong ``rejected`` (a swap, a replaced
    word, a copied instead of reversed list, a sum off by 1 or 10).

    >>> preference_pair(get_task("add").make("4 + 5"), random.Random(0))["rejected"]
    '1 0'
    """
    return _task_of(ex).preference_pair(ex, rng)


def reward(ex_or_meta: Union[Example, dict], response: str) -> float:
    """The task's reward for a response: 1.0 when correct, else the share of positions right.

    >>> reward({"task": "reverse", "answer": "one two three"}, " one two  three ")
    1.0
    >>> reward({"task": "add", "answer": "4 2"}, "4 3")
    0.5
    """
    return _task_of(ex_or_meta).reward(ex_or_meta, response)


def is_correct(ex_or_meta: Union[Example, dict], response: str) -> bool:
    """Exact match after whitespace normalization (``add``: digits, any spacing).

    >>> is_correct({"task": "add", "answer": "4 2"}, "42")
    True
    """
    return _task_of(ex_or_meta).is_correct(ex_or_meta, response)


def _score(ex: Example, response: str) -> tuple[bool, float]:
    """(correct, reward); an Example without a task name is compared as whitespace-normalized text."""
    if "task" in ex.meta:
        return is_correct(ex, response), reward(ex, response)
    ok = response.split() == ex.answer.split()
    return ok, float(ok)


def exact_match(model, tokenizer, examples: list[Example], *, max_new_tokens: int = 24,
                device: Any = None, batch: int = 32, kernels: str = "fastlm",
                n_samples: int = 4) -> dict[str, Any]:
    """Greedy held-out accuracy: each prompt rendered with the chat template (`render_prompt`),
    continued greedily until ``<|assistant_end|>`` or ``max_new_tokens`` ids, decoded and scored.

    Batching: prompts are grouped by token length and a group runs as one batch with the KV cache,
    so no row is ever padded (GPT has no padding mask) and every row sees exactly what a
    single-prompt `generate` would. Rows that stopped keep decoding until the batch is done; their
    extra ids are discarded. Returns {"accuracy", "reward" (mean), "n", "correct", "per_task":
    {name: {"accuracy", "reward", "n"}}, "samples": the first ``n_samples`` as {"task", "prompt",
    "answer", "response", "correct"}}.

    >>> import torch
    >>> from fastlm.models import GPT, GPTConfig
    >>> from fastlm.tokenizer import Tokenizer
    >>> from fastlm.tokenizer.chat_template import CHAT_SPECIALS
    >>> tok = Tokenizer([bytes([b]) for b in range(256)], special_tokens={s: 256 + i for i, s in enumerate(CHAT_SPECIALS)})
    >>> model = GPT(GPTConfig.named("tiny", vocab_size=tok.n_vocab, n_layer=1, d_model=32))
    >>> exact_match(model, tok, get_task("copy").examples("val", 3), max_new_tokens=4)["n"]
    3
    """
    import torch

    from fastlm.models.generate import KVCache
    from fastlm.tokenizer.chat_template import render_prompt

    if batch < 1 or max_new_tokens < 1:
        raise ValueError(f"batch and max_new_tokens must be >= 1, got {batch}, {max_new_tokens}")
    device = device if device is not None else next(model.parameters()).device
    eos = tokenizer.special_id("<|assistant_end|>")
    max_len = model.config.max_seq_len
    prompts = [render_prompt(tokenizer, {"messages": [{"role": "user", "content": ex.prompt}]})
               for ex in examples]
    by_len: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        by_len.setdefault(len(p), []).append(i)
    responses: list[str] = [""] * len(examples)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for length, idxs in sorted(by_len.items()):
                steps = min(max_new_tokens, max_len - length)
                if steps < 1:
                    raise ValueError(f"a prompt of {length} tokens leaves no room to answer within the "
                                     f"model's max_seq_len {max_len}")
                for s in range(0, len(idxs), batch):
                    rows = idxs[s:s + batch]
                    x = torch.tensor([prompts[i] for i in rows], dtype=torch.long, device=device)
                    cache = KVCache(length + steps)
                    out = torch.empty(len(rows), 0, dtype=torch.long, device=device)
                    for _ in range(steps):
                        h = model.hidden_states(x, kernels=kernels, kv_cache=cache)[:, -1]
                        x = model.lm_head(h).argmax(dim=-1, keepdim=True)
                        out = torch.cat([out, x], dim=1)
                        if bool((out == eos).any(dim=1).all()):
                            break
                    for i, ids in zip(rows, out.tolist()):
                        ids = ids[:ids.index(eos)] if eos in ids else ids
                        responses[i] = tokenizer.decode(ids)
    finally:
        model.train(was_training)
    scores = [_score(ex, r) for ex, r in zip(examples, responses)]
    per_task: dict[str, dict[str, float]] = {}
    for ex, (ok, rw) in zip(examples, scores):
        t = per_task.setdefault(ex.meta.get("task", ""), {"accuracy": 0.0, "reward": 0.0, "n": 0})
        t["accuracy"] += ok
        t["reward"] += rw
        t["n"] += 1
    for t in per_task.values():
        t["accuracy"] /= t["n"]
        t["reward"] /= t["n"]
    n = len(examples)
    correct = sum(ok for ok, _ in scores)
    samples = [{"task": ex.meta.get("task", ""), "prompt": ex.prompt, "answer": ex.answer,
                "response": r, "correct": ok}
               for ex, r, (ok, _) in list(zip(examples, responses, scores))[:n_samples]]
    return {"accuracy": correct / n if n else 0.0, "reward": sum(rw for _, rw in scores) / n if n else 0.0,
            "n": n, "correct": correct, "per_task": per_task, "samples": samples}
