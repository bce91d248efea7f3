"""Supervised fine-tuning: chat/instruction data rendered with the chat template, packed or padded rows.

Masking contract (as every token loss in fastlm): rows carry ``input_ids`` and ``labels`` with
``labels[t]`` = the target of position ``t`` (the id at ``t + 1``), -100 where there is no loss. By
default only assistant tokens (their content and ``<|assistant_end|>``) are targets
(`fastlm.tokenizer.chat_template.render_conversation`); ``post.train_on_prompt`` makes every token a
target but padding. No label ever crosses from one example into the next.

Data, in this order: ``post.data`` (Alpaca, ShareGPT/Vicuna, ``messages``, prompt/completion; any format
`fastlm.data.readers.read_records` reads) through `fastlm.data.chat.parse` and the instruction filters
(`fastlm.data.instruct`, default config), every record dropped counted by reason, the first few named
with file:line; else the built-in tasks (``post.tasks``: ``post.task_examples`` each as Alpaca records).
Validation: ``post.val_data``, else a ``data.val_fraction`` share of the records held out (evenly spaced: ``holdout_split``), else (tasks)
their val split, which also gives ``val/exact_match`` (greedy answers, `fastlm.posttrain.tasks.exact_match`).
Examples longer than ``data.seq_len`` are truncated; one left without a target is dropped (both counted).

Rows: ``post.packing`` packs examples first-fit (``collate.pack``, in windows of ``PACK_WINDOW`` examples of
the epoch's seeded order) into rows of ``data.seq_len`` tokens; attention is block-diagonal causal (the
model's ``doc_ids``) and positions restart at 0 per example, so a packed example computes exactly what it
computes alone. Without packing, each row is one example, right-padded to the longest of its micro-batch.
The share of row slots spent on padding is printed at start and logged (``data/padding_fraction``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np
import torch

from fastlm.posttrain.objective import Objective, check_data_state, examples_digest, load_init
from fastlm.train.collate import IGNORE_INDEX, pack, pad_collate
from fastlm.train.config import TrainConfig
from fastlm.train.distributed import DistInfo

PACK_WINDOW = 512  # examples packed together: first fit is O(window x rows), and windows keep epochs mixed
PAD_TOKEN = "<|pad|>"

Example = tuple[list[int], list[int]]  # (ids, loss_mask) from render_conversation


@dataclass
class SFTReport:
    """What happened to the records on their way to examples (printed at start)."""
    read: int = 0                                       # records read
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> count (parse errors, filters, too long)
    truncated: int = 0                                  # examples cut to seq_len (kept)
    where: list[str] = field(default_factory=list)      # the first few dropped/truncated, "file:line: reason"

    def drop(self, reason: str, where: str = "") -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
        if where and len(self.where) < 5:
            self.where.append(f"{where}: {reason}")

    def summary(self, kept: int, *, one_line: bool = False, unit: str = "examples") -> str:
        """The counts, then the first few records named (one per line; ``one_line``: the first two, inline);
        ``unit`` names what the records became (RL: "prompts")."""
        parts = [f"{self.read} records -> {kept} {unit}"]
        if self.dropped:
            parts.append("dropped " + ", ".join(f"{n} {r}" for r, n in sorted(self.dropped.items())))
        if self.truncated:
            parts.append(f"{self.truncated} truncated to seq_len")
        if one_line:
            return "; ".join(parts + [f"e.g. {' '.join(w.split())}" for w in self.where[:2]])
        return "; ".join(parts) + ("".join(f"\n  e.g. {w}" for w in self.where))


def read_chat_records(paths: list[str], report: SFTReport, *, filters: bool = True) -> list[tuple[dict, str]]:
    """``(record, "file:line")`` for every chat/instruction record of ``paths`` (JSON, JSONL or Parquet) that
    parses and passes the instruction filters; the others are counted in ``report`` (never dropped silently).
    Only the chat fields count: a record's other fields (a non-string ``text``...) do not reject it.

    >>> import json, tempfile
    >>> p = tempfile.mktemp(suffix=".jsonl"); _ = open(p, "w").write(json.dumps({"instruction": "a", "output": "b"}))
    >>> r = SFTReport(); [rec for rec, _ in read_chat_records([p], r)], r.read
    ([{'instruction': 'a', 'output': 'b'}], 1)
    """
    from fastlm.data.chat import ConversionError, check_answers, parse
    from fastlm.data.instruct import build_instruct_filters, check_instruct
    from fastlm.data.readers import read_records
    from fastlm.data.records import ErrorLog
    errors = ErrorLog(keep=5)
    checks = build_instruct_filters() if filters else []
    out = []
    # every JSON object is read (text_field=None) and parsed here: the reader's own check would refuse a chat
    # record for a bad "text" field that SFT never reads
    for rec in read_records(paths, text_field=None, errors=errors):
        report.read += 1
        where = f"{rec.source}:{rec.line}"
        try:
            chat = parse(rec.data)
        except ConversionError as e:  # no chat record at all, or a chat record the parser refuses
            report.drop("not_chat:not_chat" if e.reason == "not_chat" else f"malformed:{e.reason}", where)
            continue
        try:
            check_answers(chat)  # no training on an answer to nothing
        except ConversionError as e:
            report.drop(f"not_chat:{e.reason}", where)
            continue
        reason = check_instruct(rec.data, checks)
        if reason is not None:
            report.drop(reason, where)
            continue
        out.append((rec.data, where))
    for reason, n in errors.counts.items():  # malformed lines the reader skipped
        report.read += n
        report.dropped[f"malformed:{reason}"] = report.dropped.get(f"malformed:{reason}", 0) + n
    report.where.extend(str(b) for b in errors.samples[:max(0, 5 - len(report.where))])
    return out


def render_examples(tokenizer, records: list[tuple[dict, str]], *, seq_len: int, train_on_prompt: bool,
                    report: SFTReport) -> list[Example]:
    """``(ids, loss_mask)`` per record (chat template), cut to ``seq_len``; dropped when no target is left.

    >>> from fastlm.tokenizer import DEFAULT_SPECIALS, Tokenizer
    >>> specials = {s: 256 + i for i, s in enumerate(DEFAULT_SPECIALS)}
    >>> tok = Tokenizer([bytes([b]) for b in range(256)], special_tokens=specials)
    >>> [m for _, m in render_examples(tok, [({"prompt": "a", "completion": "b"}, "x:1")], seq_len=16,
    ...                                train_on_prompt=True, report=SFTReport())]
    [[1, 1, 1, 1, 1, 1, 1]]
    """
    from fastlm.tokenizer.chat_template import render_conversation
    out = []
    for record, where in records:
        ids, mask = render_conversation(tokenizer, record)
        if train_on_prompt:
            mask = [1] * len(ids)
        if len(ids) > seq_len:
            ids, mask = ids[:seq_len], mask[:seq_len]
            if not any(mask[1:]):  # labels are shifted: position 0 is never a target
                report.drop("too_long_no_target_left", where)
                continue
            report.truncated += 1
            if len(report.where) < 5:
                report.where.append(f"{where}: truncated to {seq_len} tokens")
        elif not any(mask[1:]):
            report.drop("no_target", where)
            continue
        out.append((ids, mask))
    return out


def padding_fraction(lengths: list[int], group: int) -> float:
    """Share of padded slots when consecutive groups of ``group`` examples are padded to their longest.

    >>> padding_fraction([2, 4, 4, 4], 2)  # slots 2 x 4 + 2 x 4, 14 tokens
    0.125
    """
    slots = sum(max(lengths[i:i + group]) * len(lengths[i:i + group]) for i in range(0, len(lengths), group))
    return (slots - sum(lengths)) / slots if slots else 0.0


class SFTRows:
    """The global stream of SFT rows, epoch after epoch in a seeded order; ``state_dict`` = the position.

    >>> rows = SFTRows([([1, 2, 3], [0, 1, 1])] * 5, seq_len=8, pad_id=0, packing=True, seed=0)
    >>> rows.take(2)["input_ids"].shape, rows.padding_fraction
    (torch.Size([2, 8]), 0.375)
    """

    def __init__(self, examples: list[Example], *, seq_len: int, pad_id: int, packing: bool, seed: int,
                 shuffle: bool = True, group: int = 1):
        if not examples:
            raise ValueError("no SFT training examples")
        self.examples, self.seq_len, self.pad_id = examples, seq_len, pad_id
        self.packing, self.seed, self.shuffle = packing, seed, shuffle
        self.epoch, self.pos = 0, 0
        self._sha: Optional[str] = None  # examples_digest, computed at the first state_dict/load_state_dict
        self._rows: Optional[Any] = None
        self._rows_epoch = -1
        self.padding_fraction = self._waste(group)  # padded: ``group`` = rows per rank's micro-batch

    def order(self, epoch: int) -> np.ndarray:
        n = len(self.examples)
        return np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)

    def _epoch_rows(self, epoch: int):
        """Packed: a dict of (R, seq_len) tensors; padded: the epoch's example order."""
        if self._rows_epoch != epoch:
            order = self.order(epoch)
            if self.packing:
                parts = [pack([self.examples[i] for i in order[s:s + PACK_WINDOW]], self.seq_len, pad_id=self.pad_id)
                         for s in range(0, len(order), PACK_WINDOW)]
                self._rows = {k: torch.cat([p[k] for p in parts]) for k in
                              ("input_ids", "labels", "position_ids", "doc_ids")}
            else:
                self._rows = order
            self._rows_epoch = epoch
        return self._rows

    def _n_rows(self, epoch: int) -> int:
        rows = self._epoch_rows(epoch)
        return rows["input_ids"].shape[0] if self.packing else len(rows)

    def _waste(self, group: int) -> float:
        if self.packing:
            used = (self._epoch_rows(0)["doc_ids"] >= 0).sum().item()
            return 1.0 - used / self._epoch_rows(0)["doc_ids"].numel()
        return padding_fraction([len(self.examples[i][0]) for i in self.order(0)], group)

    def take(self, n_global: int, rank: int = 0, world_size: int = 1) -> dict:
        """This rank's contiguous share of the next ``n_global`` rows (the cursor moves by ``n_global``)."""
        picks = []  # (epoch, row index) of the global micro-batch
        for _ in range(n_global):
            if self.pos >= self._n_rows(self.epoch):
                self.epoch, self.pos = self.epoch + 1, 0
            picks.append((self.epoch, self.pos))
            self.pos += 1
        per = n_global // world_size
        mine = picks[rank * per:(rank + 1) * per]
        if self.packing:
            return {k: torch.stack([self._epoch_rows(e)[k][i] for e, i in mine]) for k in
                    ("input_ids", "labels", "position_ids", "doc_ids")}
        batch = pad_collate([self.examples[self._epoch_rows(e)[i]] for e, i in mine], self.pad_id)
        del batch["position_ids"]  # right padding: the default 0..T-1 positions are the same
        return batch

    def _meaning(self) -> dict:
        """What the position counts in: the order's seed, rows packed or not (and their length), the examples."""
        mine = {"seed": self.seed, "packing": self.packing}
        if self.packing:
            mine["seq_len"] = self.seq_len  # the rows' boundaries
        if self._sha is None:
            self._sha = examples_digest(self.examples)
        return {**mine, "examples": len(self.examples), "examples_sha256": self._sha}

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos, **self._meaning()}

    def load_state_dict(self, state: dict) -> None:
        """Resume at ``state``; a position over other examples, another order or other rows is refused, naming
        the settings that decide it (older positions hold only epoch and pos)."""
        check_data_state(state, self._meaning(), DATA_SETTINGS, what="SFT training examples")
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])


# the settings that decide each part of an SFT data position (`SFTRows.load_state_dict` names them)
DATA_SETTINGS = {"seed": "seed", "packing": "post.packing",
                 "seq_len": "data.seq_len (packed rows)",
                 "examples": "post.data, post.val_data, data.val_fraction, post.tasks, post.task_examples, "
                             "data.seq_len",
                 "examples_sha256": "the records of post.data (or post.tasks), post.train_on_prompt, data.seq_len: "
                                    "as many examples, other tokens"}


def sft_loss(model, batch: dict, *, kernels: str) -> tuple[torch.Tensor, float]:
    """Summed next-token loss over the supervised tokens of ``batch`` and their count.

    >>> from fastlm.models import GPT, GPTConfig
    >>> m = GPT(GPTConfig.named("tiny", vocab_size=64, n_layer=1, d_model=32))
    >>> b = pad_collate([([1, 2, 3], [0, 1, 1])], pad_id=0); s, n = sft_loss(m, b, kernels="torch"); n
    2.0
    """
    extra = {"doc_ids": batch["doc_ids"], "position_ids": batch["position_ids"]} if "doc_ids" in batch else {}
    labels = batch["labels"]
    loss = model(batch["input_ids"], labels, kernels=kernels, reduction="sum", **extra)
    return loss, float((labels != IGNORE_INDEX).sum())


class SFTObjective(Objective):
    """``task=sft`` for the shared loop: see the module docstring."""

    def __init__(self, cfg: TrainConfig, info: DistInfo, *, run_dir: str, log: Callable[[str], None] = print):
        self.cfg, self.info = cfg, info
        init = load_init(cfg, tokenizer_dir=run_dir)
        from fastlm.models import GPT, RewardModel
        if not isinstance(init.model, GPT) or isinstance(init.model, RewardModel):
            raise ValueError(f"post.init_from={init.source}: SFT trains a causal LM (a clm or sft model), "
                             f"got a {type(init.model).__name__}")
        self.model, self.model_config, self.init_from = init.model, init.model_config, init.source
        self.tokenizer, self.tokenizer_path = init.tokenizer, init.tokenizer_path
        from fastlm.tokenizer.chat_template import CHAT_SPECIALS
        missing = [s for s in CHAT_SPECIALS if s not in self.tokenizer.special_tokens]
        if missing:
            raise ValueError(f"task=sft renders chat data, but the tokenizer {self.tokenizer_path} lacks the special "
                             f"tokens {missing}: start from a model whose tokenizer has them (fastlm's defaults do)")
        self.seq_len = T = cfg.data.seq_len
        if T > self.model.config.max_seq_len:
            raise ValueError(f"data.seq_len {T} > the model's max_seq_len {self.model.config.max_seq_len}")
        self.pad_id = self.tokenizer.special_tokens.get(PAD_TOKEN, self.tokenizer.special_id("<|assistant_end|>"))
        train, val, self.eval_examples, report = self._records(cfg)
        render = dict(seq_len=T, train_on_prompt=cfg.post.train_on_prompt, report=report)
        train_ex = render_examples(self.tokenizer, train, **render)
        val_ex = render_examples(self.tokenizer, val, **render)
        log(f"sft data: {report.summary(len(train_ex) + len(val_ex))}")
        if not train_ex:  # self-contained: under --quiet the report above was not printed
            src = (f"post.data {list(cfg.post.data)}" if cfg.post.data else
                   f"the built-in tasks post.tasks={list(cfg.post.tasks)}")
            raise ValueError(f"no SFT training examples in {src}: "
                             f"{report.summary(len(train_ex) + len(val_ex), one_line=True)}")
        self.rows = SFTRows(train_ex, seq_len=T, pad_id=self.pad_id, packing=cfg.post.packing, seed=cfg.seed,
                            group=cfg.micro_batch)
        self.sample_record = (val or train)[0][0]
        self.val = self._val_batches(val_ex)
        n_sup = sum(sum(m[1:]) for _, m in train_ex)
        self.summary = {"data/padding_fraction": self.rows.padding_fraction, "data/examples": len(train_ex),
                        "data/dropped": sum(report.dropped.values()), "data/truncated": report.truncated}
        log(f"sft rows: {'packed' if cfg.post.packing else 'padded'}, {len(train_ex)} train / {len(val_ex)} val "
            f"examples, {n_sup:,} supervised tokens, {self.rows.padding_fraction:.1%} of row slots are padding")

    def _records(self, cfg: TrainConfig):
        """``(train, val, eval_examples, report)``: records with their origin, and the tasks' val examples."""
        report, p = SFTReport(), cfg.post
        if p.data:
            train = read_chat_records(p.data, report)
            if p.val_data:
                return train, read_chat_records(p.val_data, report), {}, report
            from fastlm.train.data import holdout_split
            keep, held = holdout_split(len(train), cfg.data.val_fraction) if len(train) > 1 else (range(len(train)), [])
            return [train[i] for i in keep], [train[i] for i in held], {}, report
        from fastlm.posttrain.tasks import get_task
        train, val, evals = [], [], {}
        for name in p.tasks:
            task = get_task(name)
            examples = task.examples("train", p.task_examples, cfg.seed)
            train += [(task.sft_record(ex), f"task:{name}:train:{i}") for i, ex in enumerate(examples)]
            evals[name] = task.examples("val", p.eval_examples, cfg.seed)
            val += [(task.sft_record(ex), f"task:{name}:val:{i}") for i, ex in enumerate(evals[name])]
            report.read += len(examples) + len(evals[name])
        return train, val, evals, report

    def _val_batches(self, val_ex: list[Example]) -> list[dict]:
        """The fixed val batches. Every rank evaluates all of them (SFT val sets are small): the result is
        the same under any world size, and FSDP ranks run the same forwards in step."""
        B = self.cfg.micro_batch
        if not val_ex:
            return []
        if self.cfg.post.packing:
            rows = pack(val_ex, self.seq_len, pad_id=self.pad_id)
            keys = ("input_ids", "labels", "position_ids", "doc_ids")
            return [{k: rows[k][i:i + B] for k in keys} for i in range(0, rows["input_ids"].shape[0], B)]
        return [{k: v for k, v in pad_collate(val_ex[i:i + B], self.pad_id).items() if k != "position_ids"}
                for i in range(0, len(val_ex), B)]

    def next_micro(self, n_global: int) -> dict:
        return self.rows.take(n_global, self.info.rank, self.info.world_size)

    def state_dict(self) -> dict:
        return self.rows.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.rows.load_state_dict(state)

    def loss(self, model, batch: dict, *, kernels: str):
        s, n = sft_loss(model, batch, kernels=kernels)
        return s, n, {}

    def tokens(self, batch: dict) -> int:
        real = batch["doc_ids"] >= 0 if "doc_ids" in batch else batch["attention_mask"] > 0
        return int(real.sum())

    def evaluate(self, model) -> dict:
        """``val/loss`` on the val examples; ``val/exact_match`` (and per task) on the tasks' val split."""
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        out = {}
        try:
            loss, n = 0.0, 0.0
            with torch.no_grad():
                for b in self.val:
                    b = self.to_device(b, device)
                    s, k = sft_loss(model, b, kernels=self.cfg.model.kernels)
                    loss, n = loss + float(s), n + k
            if n > 0:
                out["val/loss"] = loss / n
            if self.eval_examples:
                from fastlm.posttrain.tasks import exact_match
                examples = [ex for exs in self.eval_examples.values() for ex in exs]
                r = exact_match(model, self.tokenizer, examples, max_new_tokens=self.cfg.post.max_new_tokens,
                                device=device, batch=max(self.cfg.micro_batch, 32), kernels=self.cfg.model.kernels)
                out["val/exact_match"] = r["accuracy"]
                out.update({f"val/exact_match/{name}": t["accuracy"] for name, t in r["per_task"].items()})
        finally:
            model.train(was_training)
        return out

    def sample(self, model, device, autocast=None) -> str:
        """The model's greedy answer to the first val (else train) prompt."""
        from fastlm.models.generate import generate
        from fastlm.tokenizer.chat_template import render_prompt
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                ids = list(generate(model, render_prompt(self.tokenizer, self.sample_record), temperature=0,
                                    max_new_tokens=self.cfg.sample_tokens, kernels=self.cfg.model.kernels,
                                    eos_id=self.tokenizer.special_id("<|assistant_end|>")))
        finally:
            model.train(was_training)
        return self.tokenizer.decode(ids)


# Performance notes (CPU, 2 shared cores, torch 2.13; tiny GPT d_model 128 x 2 layers, seq_len 64, 16 rows/step,
# built-in tasks copy+reverse+add, 100 steps; `tokens_per_s` counts real tokens):
#   packed  ~7.0k tokens/s, 11.8% of row slots padding (masked SDPA: block-causal (B, 1, T, T) bool mask)
#   padded  ~5.9k tokens/s, 15.0% padding (rows right-padded to the longest of the micro-batch; plain causal)
# Packing puts ~2x more examples in a step. The masked path cannot use fastlm.ops.attention (no mask argument)
# nor flash attention on GPU; variable-length (cu_seqlens) attention would remove the T x T mask: not done.
# Padded batches change shape every step: with compile=True expect recompiles (pad_collate's
# pad_to_multiple_of would bound them; not wired to a config key).
