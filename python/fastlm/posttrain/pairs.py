"""Preference pairs (prompt, chosen, rejected) for reward models and DPO: read, render, split, batch.

Record formats (TRL's preference datasets), in JSONL/JSON/Parquet files:

- standard: ``{"prompt": str, "chosen": str, "rejected": str}``, the prompt a single user turn;
- conversational: ``{"prompt": [messages], "chosen": [messages], "rejected": [messages]}``, the prompt any
  system/user/assistant turns ending with a user turn, each response one or more turns starting with
  an assistant turn (messages ``{"role", "content"}``, roles as in ``fastlm.data.chat``);
- implicit prompt: ``{"chosen": [messages], "rejected": [messages]}`` with no ``prompt``: the longest
  shared leading turns are the prompt (TRL's ``maybe_extract_prompt``).

Rendering (chat template, ``fastlm.tokenizer.chat_template``): both responses share the prompt's tokens
(``<|bos|> ... <|assistant_start|>``); a response is ``content <|assistant_end|>`` (+ more turns). Masking
contract: ``Pair.chosen_mask``/``rejected_mask`` are 1 on the response's assistant tokens (content and
``<|assistant_end|>``) and 0 on the prompt (and on user turns inside a multi-turn response), so the shifted
labels of `collate_pairs` are -100 everywhere except where the model produces the response.

Too long: a pair whose prompt + response exceeds ``seq_len`` has the response cut at ``seq_len``
(counted as ``truncated``); a prompt that leaves no room for a response token drops the pair (counted
as ``too_long``), and so do responses that differ only past ``seq_len`` (``identical_when_cut``: the cut pair
holds no preference). Malformed records (also a pair whose chosen and rejected responses are identical:
``identical_responses``) are counted by reason with file:line in an ``ErrorLog`` (never dropped silently;
`load_preference_data` reports them and the cut/dropped pairs per file; `read_pairs` raises when none is usable).
"""
from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable, Optional

import torch

from fastlm.data.chat import ConversionError, Turn, _parse_turns
from fastlm.data.records import BadRecord, ErrorLog
from fastlm.posttrain.objective import check_data_state, examples_digest
from fastlm.tokenizer.chat_template import ROLE_TOKENS, _render

IGNORE_INDEX = -100


@dataclass
class Pair:
    """One rendered preference pair: full token rows (prompt + response) and their loss masks."""
    chosen: list[int]          # prompt ids + chosen response ids
    rejected: list[int]        # prompt ids + rejected response ids
    chosen_mask: list[int]     # 1 on chosen response tokens that count, 0 on the prompt
    rejected_mask: list[int]
    prompt_len: int            # shared prompt tokens (ending with <|assistant_start|>)
    where: str = ""            # "file:line" or "task:NAME#i", for messages
    ref: Optional[tuple[float, float]] = None  # dpo: reference log-probs (chosen, rejected), when precomputed


# --------------------------------------------------------------------------------------------- parsing

def _messages(value: Any, key: str) -> list[Turn]:
    if not isinstance(value, list) or not value:
        raise ConversionError("wrong_type", f"{key!r} must be a string or a non-empty list of messages")
    return _parse_turns(value, key)


def parse_pair(data: Any) -> tuple[list[Turn], list[Turn], list[Turn]]:
    """``(prompt turns, chosen turns, rejected turns)`` of a preference record; raises ConversionError.

    >>> p, c, r = parse_pair({"prompt": "2+2?", "chosen": "4", "rejected": "5"})
    >>> [(t.role, t.content) for t in p + c + r]
    [('user', '2+2?'), ('assistant', '4'), ('assistant', '5')]
    """
    if not isinstance(data, dict):
        raise ConversionError("not_object", f"expected a JSON object, got {type(data).__name__}")
    for key in ("chosen", "rejected"):
        if key not in data:
            raise ConversionError("missing_field", f"no {key!r} field (preference records need prompt/chosen/rejected)")
    c, r = data["chosen"], data["rejected"]
    if "prompt" not in data:  # implicit prompt: the shared leading turns
        if not (isinstance(c, list) and isinstance(r, list)):
            raise ConversionError("missing_field", "no 'prompt' field (an implicit prompt needs chosen and "
                                                   "rejected as message lists)")
        chosen, rejected = _messages(c, "chosen"), _messages(r, "rejected")
        k = 0
        while k < min(len(chosen), len(rejected)) - 1 and (chosen[k].role, chosen[k].content) == \
                (rejected[k].role, rejected[k].content):
            k += 1
        prompt, chosen, rejected = chosen[:k], chosen[k:], rejected[k:]
        if not prompt:
            raise ConversionError("missing_field", "no 'prompt' field and no shared leading turns in chosen/rejected")
    elif isinstance(data["prompt"], str):
        for key, v in (("chosen", c), ("rejected", r)):
            if not isinstance(v, str):
                raise ConversionError("wrong_type", f"prompt is a string, so {key!r} must be one too, "
                                                    f"got {type(v).__name__}")
        prompt = [Turn("user", data["prompt"])]
        chosen, rejected = [Turn("assistant", c)], [Turn("assistant", r)]
    else:
        prompt = _messages(data["prompt"], "prompt")
        chosen, rejected = _messages(c, "chosen"), _messages(r, "rejected")
    if prompt[-1].role != "user":
        raise ConversionError("bad_prompt", f"the prompt must end with a user turn, not {prompt[-1].role!r}")
    for key, turns in (("chosen", chosen), ("rejected", rejected)):
        if turns[0].role != "assistant":
            raise ConversionError("bad_response", f"{key!r} must start with an assistant turn, not {turns[0].role!r}")
    if [(t.role, t.content) for t in chosen] == [(t.role, t.content) for t in rejected]:
        raise ConversionError("identical_responses", "'chosen' and 'rejected' are the same: no preference in it")
    return prompt, chosen, rejected


def render_pair(tokenizer, data: Any, *, where: str = "") -> Pair:
    """Render a preference record with the chat template (see the module docstring).

    >>> from fastlm.tokenizer import Tokenizer
    >>> from fastlm.tokenizer.chat_template import CHAT_SPECIALS
    >>> tok = Tokenizer([bytes([b]) for b in range(256)], special_tokens={s: 256 + i for i, s in enumerate(CHAT_SPECIALS)})
    >>> p = render_pair(tok, {"prompt": "hi", "chosen": "yo", "rejected": "no!"})
    >>> tok.decode(p.chosen[p.prompt_len:]), p.rejected_mask[p.prompt_len:]
    ('yo<|assistant_end|>', [1, 1, 1, 1])
    """
    prompt, chosen, rejected = parse_pair(data)
    ids, _ = _render(tokenizer, prompt)
    prompt_ids = ids + [tokenizer.special_id(ROLE_TOKENS["assistant"][0])]
    n = len(prompt_ids)
    out = []
    for turns in (chosen, rejected):
        full, mask = _render(tokenizer, prompt + turns)
        if full[:n] != prompt_ids:  # cannot happen with a response starting with an assistant turn
            raise ConversionError("bad_response", "the rendered response does not extend the prompt")
        out.append((full, [0] * n + mask[n:]))
    (c_ids, c_mask), (r_ids, r_mask) = out
    return Pair(c_ids, r_ids, c_mask, r_mask, n, where)


def fit_pair(pair: Pair, seq_len: int) -> tuple[Optional[Pair], str]:
    """``(pair, "")`` when it fits ``seq_len``; ``(cut pair, "truncated")`` with responses cut;
    ``(None, "too_long")`` when the prompt leaves no room for a response token; ``(None, "identical_when_cut")``
    when the responses differ only past ``seq_len`` (the cut chosen and rejected rows would be the same).

    >>> fit_pair(Pair([1, 2, 3], [1, 4], [0, 1, 1], [0, 1], 1), 2)[1]
    'truncated'
    >>> fit_pair(Pair([1, 2, 3], [1, 2, 4], [0, 1, 1], [0, 1, 1], 1), 2)[1]
    'identical_when_cut'
    """
    if pair.prompt_len + 1 > seq_len:
        return None, "too_long"
    if len(pair.chosen) <= seq_len and len(pair.rejected) <= seq_len:
        return pair, ""
    cut = Pair(pair.chosen[:seq_len], pair.rejected[:seq_len], pair.chosen_mask[:seq_len],
               pair.rejected_mask[:seq_len], pair.prompt_len, pair.where)
    if cut.chosen == cut.rejected and cut.chosen_mask == cut.rejected_mask:
        return None, "identical_when_cut"
    return cut, "truncated"


# --------------------------------------------------------------------------------------------- reading

class FileErrorLog(ErrorLog):
    """An `ErrorLog` that also counts per input file (``by_file[source][reason]``) and keeps each file's first
    bad record (``first[source]``), so that a report says which file holds which bad records.

    >>> log = FileErrorLog(); log.add("a.jsonl", 2, "bad_json", "x"); log.add("b.jsonl", 1, "bad_json", "y")
    >>> dict(log.by_file["b.jsonl"]), log.total
    ({'bad_json': 1}, 2)
    """

    def __init__(self, **kw: Any):
        super().__init__(**kw)
        self.by_file: dict[str, Counter[str]] = {}
        self.first: dict[str, BadRecord] = {}

    def add(self, source: str, line: int, reason: str, detail: str) -> None:
        super().add(source, line, reason, detail)
        self.by_file.setdefault(source, Counter())[reason] += 1
        self.first.setdefault(source, BadRecord(source, line, reason, detail))


def read_pairs(inputs: Iterable[str] | str, tokenizer, *, seq_len: int, errors: ErrorLog,
               counts: Optional[dict[str, int]] = None,
               by_file: Optional[dict[str, Counter[str]]] = None) -> list[Pair]:
    """Rendered pairs of every input file (dirs and globs expanded), fitted to ``seq_len``. Malformed
    records go to ``errors`` (file:line); ``counts`` receives ``read``/``truncated``/``too_long``, and
    ``by_file`` the ``truncated``/``too_long``/``identical_when_cut`` counts of each file.

    >>> # read_pairs(["prefs.jsonl"], tok, seq_len=256, errors=ErrorLog())
    """
    from fastlm.data.readers import read_records
    counts = counts if counts is not None else {}
    pairs = []
    for rec in read_records(inputs, text_field=None, errors=errors):  # JSON, JSONL or Parquet objects
        counts["read"] = counts.get("read", 0) + 1
        try:
            pair = render_pair(tokenizer, rec.data, where=f"{rec.source}:{rec.line}")
        except ConversionError as e:
            errors.add(rec.source, rec.line, e.reason, e.detail)
            continue
        pair, why = fit_pair(pair, seq_len)
        if why:
            counts[why] = counts.get(why, 0) + 1
            if by_file is not None:
                by_file.setdefault(rec.source, Counter())[why] += 1
        if pair is not None:
            pairs.append(pair)
    if not pairs:  # self-contained (under --quiet no report is printed): counts by reason, first records named
        by_reason = "".join(f", {n} {r}" for r, n in sorted(errors.counts.items()))
        shown = "".join(f"; e.g. {' '.join(str(b).split())}" for b in errors.samples[:2])
        raise ValueError(f"no usable preference pairs in {list(inputs) if not isinstance(inputs, str) else inputs}"
                         f" (parsed {counts.get('read', 0)}, malformed {errors.total}{by_reason}, "
                         f"too long for seq_len={seq_len}: {counts.get('too_long', 0)}, the same within "
                         f"seq_len: {counts.get('identical_when_cut', 0)}{shown})")
    return pairs


def task_pairs(task_names: list[str], split: str, n: int, seed: int, tokenizer, *, seq_len: int,
               counts: Optional[dict[str, int]] = None) -> list[Pair]:
    """Pairs from the built-in tasks (``fastlm.posttrain.tasks``): ``n`` examples per task of ``split``,
    each with its ``preference_pair`` (correct answer vs a plausible wrong one), interleaved by task.

    >>> # task_pairs(["add"], "train", 100, 0, tok, seq_len=128)
    """
    from fastlm.posttrain.tasks import get_task
    counts = counts if counts is not None else {}
    per_task = []
    for name in task_names:
        task = get_task(name)
        rng = random.Random(f"{seed}:{name}:{split}:pairs")
        rendered = []
        for i, ex in enumerate(task.examples(split, n, seed)):
            pair, why = fit_pair(render_pair(tokenizer, task.preference_pair(ex, rng), where=f"task:{name}#{i}"),
                                 seq_len)
            if why:
                counts[why] = counts.get(why, 0) + 1
            if pair is not None:
                rendered.append(pair)
        per_task.append(rendered)
    out = [p for group in zip(*per_task) for p in group]  # round robin, then the longer tasks' tails
    for group in per_task:
        out.extend(group[min(len(g) for g in per_task):])
    return out


def split_pairs(pairs: list[Pair], val_fraction: float, seed: int) -> tuple[list[Pair], list[Pair]]:
    """Seeded held-out split: ``(train, val)`` with ``round(len * val_fraction)`` (>= 1 when the fraction
    is > 0 and there are >= 2 pairs) in val.

    >>> tr, va = split_pairs([Pair([i], [i], [0], [0], 0) for i in range(10)], 0.2, 0)
    >>> len(tr), len(va)
    (8, 2)
    """
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    k = round(len(pairs) * val_fraction)
    if val_fraction > 0 and len(pairs) >= 2:
        k = max(k, 1)
    k = min(k, len(pairs) - 1)
    val = sorted(order[:k])
    held = set(val)
    return [p for i, p in enumerate(pairs) if i not in held], [pairs[i] for i in val]


def _fit_counts(c: dict, seq_len: int) -> list[str]:
    """The cut/dropped counts of ``c`` in words, those that are not 0."""
    words = (("truncated", f"cut to seq_len={seq_len}"), ("too_long", "dropped (prompt alone >= seq_len)"),
             ("identical_when_cut", "dropped (chosen and rejected differ only past seq_len)"))
    return [f"{c[k]} pair(s) {what}" for k, what in words if c.get(k)]


def _file_report(errors: FileErrorLog, by_file: dict[str, Counter[str]], seq_len: int) -> list[str]:
    """One line per file that had malformed, cut or dropped records, in reading order: the counts by reason,
    then the file's first malformed record."""
    lines = []
    for source in dict.fromkeys([*errors.by_file, *by_file]):
        bad = errors.by_file.get(source, Counter())
        parts = ([f"skipped {sum(bad.values())} malformed record(s) ("
                  + ", ".join(f"{r} {n}" for r, n in sorted(bad.items())) + ")"] if bad else [])
        first = errors.first.get(source)
        lines.append(f"{source}: {', '.join(parts + _fit_counts(by_file.get(source, {}), seq_len))}"
                     + (f"; e.g. line {first.line} {first.reason}: {first.detail}" if first else ""))
    return lines


def load_preference_data(cfg, tokenizer, *, seq_len: int, log=print) -> tuple[list[Pair], list[Pair], dict]:
    """``(train, val, summary)`` pairs of a reward/dpo run: ``post.data`` (val: ``post.val_data``, else a seeded
    ``data.val_fraction`` hold-out), or without data the built-in ``post.tasks`` (``task_examples`` train
    and ``eval_examples`` val examples per task, from the tasks' disjoint splits). Prints what was truncated
    and skipped, one line per file (malformed records by reason, with the file's first one by line); ``summary``
    holds the totals (``data/train_pairs``, ``data/val_pairs``, ``data/malformed``, ``data/truncated``,
    ``data/too_long``, ``data/identical_when_cut``).

    >>> # train, val = load_preference_data(TrainConfig(task="dpo"), tok, seq_len=128)
    """
    p = cfg.post
    counts: dict[str, int] = {}
    malformed = 0
    if p.data:
        def read(files: list[str]) -> list[Pair]:  # train and val apart: "no usable pairs" counts only its own
            nonlocal malformed
            errors, mine, by_file = FileErrorLog(), {}, {}
            pairs = read_pairs(files, tokenizer, seq_len=seq_len, errors=errors, counts=mine, by_file=by_file)
            for k, n in mine.items():
                counts[k] = counts.get(k, 0) + n
            malformed += errors.total
            for line in _file_report(errors, by_file, seq_len):
                log(f"preference data: {line}")
            return pairs
        train = read(p.data)
        if p.val_data:
            val = read(p.val_data)
            where = f"{len(p.data)} file(s), val {len(p.val_data)} file(s)"
        else:
            train, val = split_pairs(train, cfg.data.val_fraction, cfg.seed)
            where = f"{len(p.data)} file(s), {len(val)} held out (data.val_fraction={cfg.data.val_fraction})"
    else:
        train = task_pairs(p.tasks, "train", p.task_examples, cfg.seed, tokenizer, seq_len=seq_len, counts=counts)
        val = task_pairs(p.tasks, "val", p.eval_examples, cfg.seed, tokenizer, seq_len=seq_len, counts=counts)
        where = f"built-in tasks {','.join(p.tasks)} ({p.task_examples} train / {p.eval_examples} val each)"
        if _fit_counts(counts, seq_len):
            log(f"preference data: {', '.join(_fit_counts(counts, seq_len))}")
    if not train:
        raise ValueError(f"no training pairs left ({where}; {counts.get('too_long', 0)} dropped as too long for "
                         f"seq_len={seq_len}, {counts.get('identical_when_cut', 0)} as the same within it, "
                         f"{len(val)} held out)")
    log(f"preference data: {len(train)} train / {len(val)} val pairs from {where}")
    summary = {"data/train_pairs": len(train), "data/val_pairs": len(val), "data/malformed": malformed,
               "data/truncated": counts.get("truncated", 0), "data/too_long": counts.get("too_long", 0),
               "data/identical_when_cut": counts.get("identical_when_cut", 0)}
    return train, val, summary


# --------------------------------------------------------------------------------------------- batches

def collate_pairs(pairs: list[Pair], *, pad_id: int = 0) -> dict[str, torch.Tensor]:
    """A batch of B pairs as 2B right-padded rows, chosen first then rejected (one forward for both, as
    TRL's ``concatenated_forward``): ``input_ids``, ``labels`` (shifted; -100 outside the responses)
    and ``lengths`` (2B,) int64.

    >>> b = collate_pairs([Pair([1, 2, 3], [1, 2], [0, 1, 1], [0, 1], 1)])
    >>> b["input_ids"].tolist(), b["labels"].tolist(), b["lengths"].tolist()
    ([[1, 2, 3], [1, 2, 0]], [[2, 3, -100], [2, -100, -100]], [3, 2])
    """
    from fastlm.train.collate import pad_collate
    if not pairs:
        raise ValueError("collate_pairs: no pairs")
    rows = [(p.chosen, p.chosen_mask) for p in pairs] + [(p.rejected, p.rejected_mask) for p in pairs]
    out = pad_collate(rows, pad_id, side="right")
    return {"input_ids": out["input_ids"], "labels": out["labels"], "lengths": out["attention_mask"].sum(-1)}


class PairStream:
    """Seeded epochs over training pairs; `next_micro` returns this rank's contiguous share of the next
    global micro-batch (so the data position is one cursor, free of the world size), resumable.

    The state also holds what the position counts in (the seed, the pair count and digest), so a resume over
    other pairs is refused, naming the settings that decide them.

    >>> s = PairStream([Pair([i, i], [i, 0], [0, 1], [0, 1], 1) for i in range(5)], seed=0, rank=0, world=1)
    >>> len(s.next_micro(2)), {k: s.state_dict()[k] for k in ("epoch", "pos", "seed", "pairs")}
    (2, {'epoch': 0, 'pos': 2, 'seed': 0, 'pairs': 5})
    """

    def __init__(self, pairs: list[Pair], *, seed: int, rank: int, world: int):
        if not pairs:
            raise ValueError("PairStream: no training pairs")
        self.pairs, self.seed, self.rank, self.world = pairs, seed, rank, world
        self.epoch, self.pos = 0, 0
        self._sha: Optional[str] = None  # examples_digest of the pairs, at the first state_dict/load_state_dict
        self._order = self._shuffle(0)

    def _shuffle(self, epoch: int) -> list[int]:
        order = list(range(len(self.pairs)))
        random.Random(self.seed * 1000003 + epoch).shuffle(order)
        return order

    def next_micro(self, n_global: int) -> list[Pair]:
        """This rank's pairs of the next ``n_global`` (a multiple of the world size)."""
        if n_global % self.world:
            raise ValueError(f"n_global {n_global} is not a multiple of the world size {self.world}")
        picked = []
        while len(picked) < n_global:
            if self.pos == len(self._order):
                self.epoch, self.pos = self.epoch + 1, 0
                self._order = self._shuffle(self.epoch)
            picked.append(self._order[self.pos])
            self.pos += 1
        share = n_global // self.world
        return [self.pairs[i] for i in picked[self.rank * share:(self.rank + 1) * share]]

    def _meaning(self) -> dict:
        if self._sha is None:
            self._sha = examples_digest((p.chosen, p.rejected, p.chosen_mask, p.rejected_mask, [p.prompt_len])
                                        for p in self.pairs)
        return {"seed": self.seed, "pairs": len(self.pairs), "pairs_sha256": self._sha}

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos, **self._meaning()}

    def load_state_dict(self, state: dict) -> None:
        """Resume at ``state``; a position over other pairs or another order is refused (older positions hold
        only epoch and pos)."""
        check_data_state(state, self._meaning(), PAIR_SETTINGS, what="preference training pairs")
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])
        self._order = self._shuffle(self.epoch)


# the settings that decide each part of a pair data position (`PairStream.load_state_dict` names them)
PAIR_SETTINGS = {"seed": "seed",
                 "pairs": "post.data, post.val_data, data.val_fraction, post.tasks, post.task_examples, "
                          "data.seq_len",
                 "pairs_sha256": "the records of post.data (or post.tasks), data.seq_len: as many pairs, "
                                 "other tokens"}
