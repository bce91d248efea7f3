"""Reward model: the pairwise loss vs TRL's formula, the scalar head at the last real token, checkpoints,
scoring for RL, and end to end (`fastlm-train --task reward` ranks held-out chosen above rejected)."""
import json
import math
import os

import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402

from fastlm.models import GPT, GPTConfig, RewardConfig, config_to_dict  # noqa: E402
from fastlm.models.reward import RewardModel  # noqa: E402
from fastlm.posttrain.pairs import collate_pairs, render_pair  # noqa: E402
from fastlm.posttrain.reward import (load_reward_model, pair_rewards, render_exchange, reward_loss,  # noqa: E402
                                     score, score_ids)
from fastlm.train.checkpoint import CheckpointError, save_checkpoint  # noqa: E402
from fastlm.train.distributed import DistInfo  # noqa: E402

torch.set_num_threads(1)


def byte_tok():
    from fastlm.tokenizer import Tokenizer
    from fastlm.tokenizer.chat_template import CHAT_SPECIALS
    return Tokenizer([bytes([b]) for b in range(256)], special_tokens={s: 256 + i for i, s in enumerate(CHAT_SPECIALS)})


TOK = byte_tok()
V = TOK.n_vocab


def trl_reward_loss(rc, rr, margin=None, center=None):
    """TRL RewardTrainer.compute_loss, transcribed."""
    if margin is not None:
        loss = -F.logsigmoid(rc - rr - margin).mean()
    else:
        loss = -F.logsigmoid(rc - rr).mean()
    if center is not None:
        loss += center * torch.mean((rc + rr) ** 2)
    return loss


def small(seed=0, **kw):
    torch.manual_seed(seed)
    return GPTConfig.named("tiny", vocab_size=V, n_layer=1, d_model=32, n_head=2, max_seq_len=64, **kw)


def test_loss_on_hand_made_pairs():
    rc, rr = torch.tensor([2.0, 0.0, -1.0]), torch.tensor([0.5, 0.0, 1.0])
    got = reward_loss(rc, rr)
    want = [math.log1p(math.exp(-1.5)), math.log(2.0), math.log1p(math.exp(2.0))]
    assert got.tolist() == pytest.approx(want, abs=1e-6)
    got = reward_loss(rc, rr, margin=1.0, center_rewards=0.01)
    want = [math.log1p(math.exp(-0.5)) + 0.01 * 2.5 ** 2, math.log1p(math.exp(1.0)),
            math.log1p(math.exp(3.0))]
    assert got.tolist() == pytest.approx(want, abs=1e-6)


@pytest.mark.parametrize("margin,center", [(None, None), (0.7, None), (None, 0.01), (0.3, 0.05)])
def test_loss_matches_trl(margin, center):
    g = torch.Generator().manual_seed(0)
    rc = torch.randn(17, generator=g, requires_grad=True)
    rr = torch.randn(17, generator=g, requires_grad=True)
    ours = reward_loss(rc, rr, margin=margin or 0.0, center_rewards=center or 0.0).mean()
    theirs = trl_reward_loss(rc, rr, margin, center)
    assert float(ours.detach()) == pytest.approx(float(theirs.detach()), abs=1e-6)
    ga = torch.autograd.grad(ours, (rc, rr))
    gb = torch.autograd.grad(theirs, (rc, rr))
    for a, b in zip(ga, gb):
        assert torch.allclose(a, b, atol=1e-7)


def test_reward_read_at_last_real_token():
    rm = RewardModel(small())
    g = torch.Generator().manual_seed(1)
    rows = [torch.randint(0, V, (n,), generator=g) for n in (9, 4, 1)]
    ids = torch.zeros(3, 9, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = r
    lengths = torch.tensor([9, 4, 1])
    got = rm(ids, lengths=lengths)
    alone = torch.cat([rm(r.unsqueeze(0)) for r in rows])
    assert torch.allclose(got, alone, atol=1e-5)
    # the head on the last real hidden state, by hand
    h = rm.hidden_states(ids)
    by_hand = (h[torch.arange(3), lengths - 1] @ rm.score.weight.t() + rm.score.bias).squeeze(-1)
    assert torch.allclose(got, by_hand, atol=1e-6)
    ids2 = ids.clone()
    ids2[1, 4:] = 7  # other padding contents: same rewards
    assert torch.allclose(rm(ids2, lengths=lengths), got, atol=1e-6)
    mask = (torch.arange(9).unsqueeze(0) < lengths.unsqueeze(1)).long()
    assert torch.allclose(rm(ids, attention_mask=mask), got, atol=1e-6)
    with pytest.raises(ValueError, match="right-padded"):
        rm(ids, attention_mask=mask.flip(-1))
    with pytest.raises(ValueError, match="lengths must be in"):
        rm(ids, lengths=torch.tensor([9, 0, 1]))


def test_from_gpt_and_checkpoint_kind(tmp_path):
    gpt = GPT(small())
    rm = RewardModel.from_gpt(gpt)
    assert type(rm.config) is RewardConfig and config_to_dict(rm.config)["kind"] == "reward"
    assert config_to_dict(gpt.config)["kind"] == "gpt"
    for k, v in gpt.state_dict().items():
        assert torch.equal(rm.state_dict()[k], v), k
    assert torch.equal(rm.hidden_states(torch.tensor([[1, 2, 3]])), gpt.hidden_states(torch.tensor([[1, 2, 3]])))
    tok = TOK
    tok_file = str(tmp_path / "tok.fastlm")
    tok.save(tok_file)
    p = save_checkpoint(str(tmp_path / "rm"), 3, model_state=rm.state_dict(), optimizer_state=None,
                        meta={"model_config": config_to_dict(rm.config)}, tokenizer_path=tok_file)
    loaded, ltok = load_reward_model(str(tmp_path / "rm"))
    assert isinstance(loaded, RewardModel) and ltok.n_vocab == tok.n_vocab
    x = torch.randint(0, V, (2, 5))
    assert torch.allclose(loaded(x), rm(x), atol=1e-6)
    p = save_checkpoint(str(tmp_path / "lm"), 1, model_state=gpt.state_dict(), optimizer_state=None,
                        meta={"model_config": config_to_dict(gpt.config)}, tokenizer_path=tok_file)
    with pytest.raises(CheckpointError, match="not a reward model"):
        load_reward_model(p)
    with pytest.raises(TypeError):
        RewardModel.from_gpt(rm)


def test_untied_head_is_frozen():
    rm = RewardModel(small(tie_embeddings=False))
    assert not rm.lm_head.weight.requires_grad and rm.score.weight.requires_grad


def test_score_matches_pair_rewards_and_score_ids():
    tok = TOK
    rm = RewardModel(small())
    recs = [{"prompt": "2+2?", "chosen": "4", "rejected": "five"}, {"prompt": "hi there", "chosen": "yo", "rejected": "x"}]
    pairs = [render_pair(tok, r) for r in recs]
    rc, rr = pair_rewards(rm, collate_pairs(pairs), kernels="fastlm")
    s = score(rm, tok, [r["prompt"] for r in recs] * 2, [r["chosen"] for r in recs] + [r["rejected"] for r in recs],
              batch_size=3)
    assert torch.allclose(s, torch.cat([rc, rr]).detach(), atol=1e-5)
    assert render_exchange(tok, "2+2?", "4") == pairs[0].chosen
    msgs = [{"role": "user", "content": "2+2?"}]
    assert torch.allclose(score(rm, tok, [msgs], ["4"]), s[:1], atol=1e-6)
    assert torch.allclose(score_ids(rm, [pairs[0].chosen]), s[:1], atol=1e-6)
    with pytest.raises(ValueError, match="prompts for"):
        score(rm, tok, ["a"], ["b", "c"])


# ------------------------------------------------------------------------------------------- end to end

def _task_tokenizer(path):
    from fastlm.posttrain.tasks import get_task
    from fastlm.tokenizer import Tokenizer
    from fastlm.tokenizer.chat_template import CHAT_SPECIALS
    texts = [e.prompt + "\n" + e.answer for n in ("copy", "reverse", "sort", "add")
             for e in get_task(n).examples("train", 300, 0)]
    tok = Tokenizer.train_from_iterator(texts, 320, special_tokens={s: 320 + i for i, s in enumerate(CHAT_SPECIALS)})
    tok.save(path)
    return path


def pairs_config(tmp_path, task, **over):
    """A reward/dpo run from a fresh tiny model on the built-in ``sort`` task (word-level BPE)."""
    from fastlm.config import from_dict
    from fastlm.train.config import TrainConfig
    tok = str(tmp_path / "tok.fastlm")
    if not os.path.exists(tok):
        _task_tokenizer(tok)
    data = {"task": task, "out": str(tmp_path / "runs"), "run_name": task, "micro_batch": 32, "max_steps": 300,
            "eval_every": 0, "ckpt_every": 0, "log_every": 50, "plot": False, "spike_factor": 1e9,
            "data": {"tokenizer": tok, "seq_len": 64},
            "model": {"size": "tiny", "overrides": {"n_layer": 2, "d_model": 64, "n_head": 4, "max_seq_len": 64}},
            "optim": {"lr": 3e-3, "warmup_steps": 10, "weight_decay": 0.0},
            "post": {"init_from": "none", "tasks": ["sort"], "task_examples": 2000, "eval_examples": 200}}
    for k, v in over.items():
        data[k] = {**data[k], **v} if isinstance(v, dict) else v
    return from_dict(TrainConfig, data)


def _metrics(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.mark.slow
def test_reward_model_ranks_held_out_pairs(tmp_path):
    from fastlm.train.trainer import run
    cfg = pairs_config(tmp_path, "reward", max_steps=550, eval_every=550)
    res = run(cfg, console=False)
    val = [m for m in _metrics(res.run_dir) if "val/accuracy" in m]
    assert val[0]["step"] == 0 and 0.3 <= val[0]["val/accuracy"] <= 0.7  # chance before training
    print("reward held-out:", val[-1])
    assert val[-1]["val/accuracy"] > 0.8, val[-1]
    assert val[-1]["val/margin"] > 1.0
    rm, tok = load_reward_model(res.run_dir)
    from fastlm.posttrain.tasks import SEP, get_task
    task = get_task("sort")
    exs = task.examples("val", 50, 1)
    good = score(rm, tok, [e.prompt for e in exs], [e.answer for e in exs])
    lead = [e.answer[:len(e.answer) - len(e.answer.lstrip())] for e in exs]  # the answers' own format
    bad = score(rm, tok, [e.prompt for e in exs], [w + SEP.join(reversed(e.answer.split())) for w, e in zip(lead, exs)])
    assert float((good > bad).float().mean()) > 0.8


def test_reward_resume_is_exact(tmp_path):
    from fastlm.train.trainer import run
    over = dict(max_steps=4, log_every=1, micro_batch=4, optim={"warmup_steps": 1},
                post={"task_examples": 40, "eval_examples": 8})
    full = run(pairs_config(tmp_path, "reward", run_name="full", **over), console=False)
    run(pairs_config(tmp_path, "reward", run_name="part", ckpt_every=2, **over), console=False)
    part_dir = os.path.join(str(tmp_path / "runs"), "part")
    import shutil
    shutil.rmtree(os.path.join(part_dir, "checkpoints", "step-00000004"))
    resumed = run(pairs_config(tmp_path, "reward", run_name="part", ckpt_every=2, **over), resume=part_dir,
                  console=False)
    a, _ = load_reward_model(full.checkpoint)
    b, _ = load_reward_model(resumed.checkpoint)
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), k


def test_reward_run_starts_from_the_newest_sft_checkpoint(tmp_path):
    from fastlm.posttrain.reward import RewardObjective
    cfg = pairs_config(tmp_path, "reward", micro_batch=4, post={"init_from": "auto", "task_examples": 8,
                                                                "eval_examples": 4})
    from fastlm.tokenizer import Tokenizer
    tok_file = cfg.data.tokenizer
    torch.manual_seed(3)
    sft = GPT(GPTConfig.named("tiny", vocab_size=Tokenizer.from_file(tok_file).n_vocab, n_layer=1, d_model=32,
                              n_head=2, max_seq_len=64))
    meta = {"model_config": config_to_dict(sft.config), "train_config": {**cfg.to_dict(), "task": "sft"}}
    save_checkpoint(os.path.join(cfg.out, "sft-run", "checkpoints"), 5, model_state=sft.state_dict(),
                    optimizer_state=None, meta=meta, tokenizer_path=tok_file)
    obj = RewardObjective(cfg, DistInfo(), run_dir=str(tmp_path / "rm"), log=lambda *a: None)
    assert isinstance(obj.model, RewardModel) and obj.init_from.endswith("step-00000005")
    assert obj.model_config["kind"] == "reward"
    assert torch.equal(obj.model.tok_emb.weight, sft.tok_emb.weight)
    s, n, m = obj.loss(obj.model, obj.next_micro(4), kernels="fastlm")
    assert n == 4.0 and 0 <= m["train/accuracy"] <= 4
    b = obj.next_micro(4)
    rc, rr = pair_rewards(obj.model, b, kernels="torch")
    assert float(obj.loss(obj.model, b, kernels="torch")[0].detach()) == pytest.approx(
        float(trl_reward_loss(rc, rr).detach()) * 4, abs=1e-5)
