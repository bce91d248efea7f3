"""RL post-training: batched rollouts (padded KV cache == one prompt at a time), scoring layout, and PPO /
GRPO / RLOO end to end on a tiny SFT'd model with the built-in tasks' reward (improvement, resume, errors)."""
import json
import os
import random

import pytest
import torch

from fastlm.models import GPT, GPTConfig, config_to_dict
from fastlm.models.generate import generate
from fastlm.posttrain.logprobs import token_logprobs
from fastlm.posttrain.rl import PolicyWithValue, PromptSource, run_rl
from fastlm.posttrain.rollout import PaddedKVCache, build_batch, sample_responses
from fastlm.posttrain.tasks import examples_for, exact_match
from fastlm.tokenizer import Tokenizer
from fastlm.tokenizer.chat_template import render_conversation
from fastlm.train.checkpoint import load_checkpoint, load_model, save_checkpoint
from fastlm.train.config import load_train_config

torch.set_num_threads(1)


def _model(vocab=50, seed=0, **kw):
    torch.manual_seed(seed)
    # a large init std: a random model whose greedy continuations vary (0.02 repeats one token)
    return GPT(GPTConfig.named("tiny", vocab_size=vocab, n_layer=2, d_model=64, n_head=4, init_std=0.3, **kw)).eval()


PROMPTS = [[1, 2, 3, 4, 5, 6, 7], [8], [9, 10, 11], [12, 13, 14, 15], [16, 17]]


@pytest.mark.parametrize("kernels", ["fastlm", "torch"])
def test_batched_cached_rollout_equals_one_prompt_at_a_time(kernels):
    model = _model()
    out = sample_responses(model, PROMPTS, max_new_tokens=12, eos_id=None, temperature=0, kernels=kernels)
    ref = [list(generate(model, p, max_new_tokens=12, temperature=0, use_cache=False, kernels=kernels))
           for p in PROMPTS]
    assert out == ref
    assert len({tuple(r) for r in out}) > 1 and any(len(set(r)) > 2 for r in out)  # not a degenerate case
    eos = ref[2][3]  # stop at a token that row 2 produces: that row ends there, eos kept
    out = sample_responses(model, PROMPTS, max_new_tokens=12, eos_id=eos, temperature=0, kernels=kernels)
    for o, r in zip(out, ref):
        assert o == (r[:r.index(eos) + 1] if eos in r else r)


def test_sampled_rollout_matches_generate_with_same_seed():
    model = _model(seed=1)
    for p in PROMPTS[:3]:
        a = sample_responses(model, [p], max_new_tokens=10, eos_id=None, temperature=1.0, top_k=20,
                             generator=torch.Generator().manual_seed(5))[0]
        b = list(generate(model, p, max_new_tokens=10, temperature=1.0, top_k=20,
                          generator=torch.Generator().manual_seed(5)))
        assert a == b


def test_padded_cache_mask_and_positions():
    cache = PaddedKVCache(max_len=6, pad=torch.tensor([0, 2]))
    assert cache.positions(4).tolist() == [[0, 1, 2, 3], [0, 0, 0, 1]]
    model = _model()
    x = torch.tensor([[1, 2, 3, 4], [0, 0, 3, 4]])
    with torch.no_grad():
        h = model.hidden_states(x, kv_cache=cache, position_ids=cache.positions(4))
    assert torch.isfinite(h).all()  # padded queries see themselves: no empty softmax row
    alone = model.hidden_states(torch.tensor([[3, 4]]))
    assert torch.allclose(h[1, 2:], alone[0], atol=1e-5)  # padding changes nothing for the real tokens


def test_build_batch_and_scoring_layout():
    b = build_batch([[5, 6, 7], [8]], [[9, 10], [11, 12, 13]], pad_id=0)
    assert b.ids.tolist() == [[5, 6, 7, 9, 10], [8, 11, 12, 13, 0]]
    assert b.labels.tolist() == [[-100, -100, 9, 10, -100], [11, 12, 13, -100, -100]]
    assert b.last.tolist() == [3, 2]  # position of each row's last action
    model = _model()
    tv = PolicyWithValue(model, value=True)
    torch.nn.init.normal_(tv.value_head.weight)
    logp, values, ent = tv.score(b, kernels="fastlm", entropy=True)
    assert torch.allclose(logp, token_logprobs(model, b.ids, b.labels), atol=1e-6)
    h = model.hidden_states(b.ids)
    assert torch.allclose(values, tv.value_head(h).squeeze(-1), atol=1e-5)
    probs = torch.softmax(model.lm_head(h), -1)
    want = -(probs * probs.log()).sum(-1) * b.mask
    assert torch.allclose(ent, want, atol=1e-4)
    sub = b.select(torch.tensor([1]))  # a minibatch row scores as in the full batch: ratio exactly 1
    lp_sub, _, _ = tv.score(sub, kernels="fastlm")
    assert sub.ids.shape == (1, 4) and torch.allclose(lp_sub[0], logp[1, :4], atol=1e-6)


def test_scoring_at_the_sampling_temperature():
    """Rollouts drawn at temperature t are scored under logits / t: log-probs and entropy of what was sampled
    (the PPO ratio's denominator); the value head reads the untempered hidden states."""
    b = build_batch([[5, 6, 7], [8]], [[9, 10], [11, 12, 13]], pad_id=0)
    model = _model()
    tv = PolicyWithValue(model, value=True, temperature=0.7)
    torch.nn.init.normal_(tv.value_head.weight)
    logp, values, ent = tv.score(b, kernels="fastlm", entropy=True)
    logits = model(b.ids, kernels="torch") / 0.7
    want = torch.log_softmax(logits, -1).gather(-1, b.labels.clamp_min(0)[..., None])[..., 0] * b.mask
    assert torch.allclose(logp, want, atol=1e-5)
    assert not torch.allclose(logp, token_logprobs(model, b.ids, b.labels), atol=1e-3)
    probs = torch.softmax(logits, -1)
    assert torch.allclose(ent, -(probs * probs.log()).sum(-1) * b.mask, atol=1e-4)
    assert torch.allclose(values, tv.value_head(model.hidden_states(b.ids)).squeeze(-1), atol=1e-5)


def test_prompt_source_epochs_and_resume():
    src = PromptSource([([i], {}) for i in range(5)], seed=3)
    first = [x[0][0] for x in src.next(7)]
    assert sorted(first[:5]) == list(range(5))
    state = src.state_dict()
    rest = [x[0][0] for x in src.next(6)]
    again = PromptSource([([i], {}) for i in range(5)], seed=3)
    again.load_state_dict(state)
    assert [x[0][0] for x in again.next(6)] == rest


# ---------------------------------------------------------------------------------------- end to end

TASK = "copy"


def _copy_problems(n_train, n_val, seed=0):
    """Copy problems in a form a 2-layer d=64 model learns in 150 SFT steps (~50% exact match): the
    words on their own line after the instruction, the answer without a leading space. (The built-in
    copy task's one-line form takes this model >400 steps to pass 7%: too slow for a test fixture.)
    Records carry ``task``/``answer``, so the built-in copy reward scores them (whitespace-split items)."""
    from fastlm.posttrain.tasks import WORDS
    rng, seen = random.Random(seed), set()
    while len(seen) < n_train + n_val:
        seen.add(" ".join(rng.sample(WORDS, rng.randint(2, 5))))
    rows = [{"prompt": f"Repeat these words exactly.\n\n{w}", "task": "copy", "answer": w} for w in sorted(seen)]
    rng.shuffle(rows)
    return rows[:n_train], rows[n_train:]


@pytest.fixture(scope="module")
def sft_model(tmp_path_factory):
    """A tiny GPT taught `_copy_problems` by a plain masked-loss loop (a quick stand-in for `--task sft`),
    saved as an sft checkpoint with its tokenizer (trained on these texts and the built-in copy task's:
    words are single tokens). The RL prompts are train.jsonl (``post.data``), the held-out ones val.jsonl
    (``post.val_data``); the other tests run on the built-in copy task (``post.tasks``)."""
    d = str(tmp_path_factory.mktemp("rl"))
    train, val = _copy_problems(400, 200)
    for name, rows in (("train.jsonl", train), ("val.jsonl", val)):
        with open(os.path.join(d, name), "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    builtin = examples_for([TASK], "train", 200, seed=0)
    tok = Tokenizer.train_from_iterator([r["prompt"] + "\n" + r["answer"] for r in train] +
                                        [ex.prompt + "\n" + ex.answer for ex in builtin], 400)
    torch.manual_seed(0)
    cfg = GPTConfig.named("tiny", vocab_size=tok.n_vocab, n_layer=2, d_model=64, n_head=4, max_seq_len=96)
    model = GPT(cfg)
    rows = [render_conversation(tok, {"instruction": r["prompt"], "output": r["answer"]}) for r in train]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    rng = random.Random(0)
    for _ in range(150):
        batch = rng.sample(rows, 32)
        T = max(len(i) for i, _ in batch)
        x = torch.tensor([i + [0] * (T - len(i)) for i, _ in batch])
        y = torch.tensor([[i[t + 1] if t + 1 < len(i) and m[t + 1] else -100 for t in range(T)] for i, m in batch])
        model(x, y).backward()
        opt.step()
        opt.zero_grad()
    tp = os.path.join(d, "tok.fastlm")
    tok.save(tp)
    ckpt = save_checkpoint(os.path.join(d, "sft", "checkpoints"), 150, model_state=model.state_dict(),
                           optimizer_state=None, tokenizer_path=tp,
                           meta={"model_config": config_to_dict(cfg), "train_config": {"task": "sft"}})
    return d, ckpt, tok


def _cfg(out, ckpt, task, steps, *extra):
    return load_train_config(None, [
        f"task={task}", f"out={out}", f"run_name={task}", f"post.init_from={ckpt}", "post.reward_model=task",
        f"post.tasks=[{TASK}]", "post.eval_examples=200", "post.max_new_tokens=16", f"max_steps={steps}",
        "eval_every=0", "log_every=1", "optim.lr=5e-4", "optim.warmup_steps=0",
        "optim.schedule=constant", "post.prompts_per_step=16", "post.samples_per_prompt=4", "post.kl_coef=0.01",
        "post.ppo_epochs=2", "post.minibatches=2", "post.temperature=1.0", "plot=false", *extra])


def _metrics(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def _val_exact(run_dir):
    return [r["val/exact_match"] for r in _metrics(run_dir) if "val/exact_match" in r]


@pytest.mark.slow
@pytest.mark.parametrize("task", ["grpo", "ppo"])
def test_rl_raises_reward_and_exact_match(sft_model, task):
    """~30 s each on one CPU thread. Measured (these seeds, 150 SFT steps): grpo sampled train reward
    0.522 -> 0.730 (first vs last 25 steps), held-out greedy exact match 0.280 -> 0.415 (reward 0.709 ->
    0.787); ppo 0.539 -> 0.744, 0.280 -> 0.425 (0.709 -> 0.793), on 200 held-out copy problems."""
    d, ckpt, tok = sft_model
    steps = 100
    n = "post.prompts_per_step=64" if task == "ppo" else "post.prompts_per_step=16"  # 64 samples a step
    data = (f"post.data=[{d}/train.jsonl]", f"post.val_data=[{d}/val.jsonl]")
    res = run_rl(_cfg(os.path.join(d, task), ckpt, task, steps, f"eval_every={steps}", n, *data), console=False)
    rows = _metrics(res.run_dir)
    rewards = [r["reward/mean"] for r in rows if "reward/mean" in r]
    assert len(rewards) == steps
    for r in rows:
        if "reward/mean" in r:
            assert {"kl", "entropy", "clip_frac", "response_len", "lr"} <= set(r)
            assert ("value_loss" in r and r["value_loss"] is not None) == (task == "ppo")
    vals = [r for r in rows if "val/exact_match" in r]
    assert [r["step"] for r in vals] == [0, steps]
    q = steps // 4
    first, last = sum(rewards[:q]) / q, sum(rewards[-q:]) / q
    print(f"{task}: train reward {first:.3f} -> {last:.3f}; held-out exact match {vals[0]['val/exact_match']:.3f} "
          f"-> {vals[1]['val/exact_match']:.3f}, reward {vals[0]['val/reward']:.3f} -> {vals[1]['val/reward']:.3f}")
    assert last > first  # sampled reward on the training prompts rises
    assert vals[1]["val/reward"] > vals[0]["val/reward"]  # greedy reward on held-out prompts rises
    assert vals[1]["val/exact_match"] >= vals[0]["val/exact_match"]
    model, mtok, meta = load_model(res.checkpoint)  # a plain GPT checkpoint: generate/eval/export load it
    assert type(model).__name__ == "GPT" and meta["train_config"]["task"] == task
    from fastlm.posttrain.rl import _prompts
    held_out = _prompts(_cfg(d, ckpt, task, 1, *data), mtok)[1]
    assert len(held_out) == 200
    again = exact_match(model, mtok, held_out, max_new_tokens=16)
    assert again["accuracy"] == pytest.approx(vals[1]["val/exact_match"])


@pytest.mark.parametrize("task", ["rloo", "ppo"])
def test_resume_continues_exactly(sft_model, task):
    d, ckpt, _ = sft_model
    extra = ("post.prompts_per_step=4", "post.eval_examples=8", "ckpt_every=2", "keep_last=5")
    full = run_rl(_cfg(os.path.join(d, f"full-{task}"), ckpt, task, 4, *extra), console=False)
    cut = run_rl(_cfg(os.path.join(d, f"cut-{task}"), ckpt, task, 2, *extra), console=False)
    resumed = run_rl(_cfg(os.path.join(d, f"cut-{task}"), ckpt, task, 4, *extra), resume=cut.checkpoint,
                     console=False)
    assert resumed.step == 4
    a, b = load_checkpoint(full.checkpoint), load_checkpoint(resumed.checkpoint)
    for k, v in a.model_state.items():
        assert torch.equal(v, b.model_state[k]), k
    if task == "ppo":
        assert a.meta["value_head"] == b.meta["value_head"]
    keep = ("reward/mean", "kl", "clip_frac", "response_len")
    ra = [{k: r.get(k) for k in keep} for r in _metrics(full.run_dir) if "reward/mean" in r]
    rb = [{k: r.get(k) for k in keep} for r in _metrics(resumed.run_dir) if "reward/mean" in r]
    assert ra == rb


def test_sigterm_stops_after_the_step_with_a_checkpoint_that_resumes_exactly(sft_model, monkeypatch):
    import signal

    import fastlm.posttrain.rl as rl

    d, ckpt, _ = sft_model
    extra = ("post.prompts_per_step=4", "post.eval_examples=8", "ckpt_every=100")
    full = run_rl(_cfg(os.path.join(d, "full-term"), ckpt, "grpo", 4, *extra), console=False)
    rollouts, sample = [0], rl.sample_responses

    def term_during_step_2(*a, **k):
        rollouts[0] += 1
        if rollouts[0] == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # the handler only raises a flag: this step finishes
        return sample(*a, **k)

    monkeypatch.setattr(rl, "sample_responses", term_during_step_2)
    cut = run_rl(_cfg(os.path.join(d, "cut-term"), ckpt, "grpo", 4, *extra), console=False)
    assert (cut.stopped, cut.step, rollouts[0]) == ("sigterm", 2, 2) and cut.checkpoint.endswith("step-00000002")
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # restored
    monkeypatch.setattr(rl, "sample_responses", sample)
    resumed = run_rl(_cfg(os.path.join(d, "cut-term"), ckpt, "grpo", 4, *extra), resume=cut.checkpoint, console=False)
    a, b = load_checkpoint(full.checkpoint), load_checkpoint(resumed.checkpoint)
    assert resumed.step == 4 and all(torch.equal(v, b.model_state[k]) for k, v in a.model_state.items())


def test_rloo_short_run_logs_and_checkpoints(sft_model):
    d, ckpt, _ = sft_model
    res = run_rl(_cfg(os.path.join(d, "rloo"), ckpt, "rloo", 3, "post.prompts_per_step=4", "post.eval_examples=8",
                      "sample_every=2", "post.kl_coef=0", f"post.data=[{d}/train.jsonl]",
                      f"post.val_data=[{d}/val.jsonl]"), console=False)
    vals = [r for r in _metrics(res.run_dir) if "val/exact_match" in r]
    assert [r["step"] for r in vals] == [3] and res.val["n"] == 8  # the val_data records, eval_examples of them
    builtin = run_rl(_cfg(os.path.join(d, "rloo-builtin"), ckpt, "rloo", 1, "post.prompts_per_step=2",
                          "post.eval_examples=8"), console=False)  # the built-in task's train/val splits
    assert builtin.val["n"] == 8 and builtin.step == 1
    rows = [r for r in _metrics(res.run_dir) if "reward/mean" in r]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(r["kl_coef"] == 0.0 for r in rows)  # kl_coef 0: no reference kept
    assert os.path.isfile(os.path.join(res.run_dir, "config.yaml")) and res.sample
    assert os.path.isfile(os.path.join(res.checkpoint, "tokenizer.fastlm"))


def test_ppo_adaptive_kl_coefficient_follows_the_controller(sft_model):
    d, ckpt, _ = sft_model
    res = run_rl(_cfg(os.path.join(d, "ppo-akl"), ckpt, "ppo", 3, "post.prompts_per_step=4", "post.eval_examples=8",
                      "post.kl_coef=0.2", "post.kl_target=0.01"), console=False)
    rows = [r for r in _metrics(res.run_dir) if "reward/mean" in r]
    coef = 0.2
    for r in rows:  # logged kl_coef = the value after this batch's update
        coef *= 1 + max(-0.2, min(0.2, r["kl"] / 0.01 - 1)) * 4 / 10000
        assert r["kl_coef"] == pytest.approx(coef, rel=1e-9)
    assert rows[-1]["kl_coef"] != 0.2


def test_errors_are_clear(sft_model, tmp_path):
    d, ckpt, _ = sft_model
    with pytest.raises(ValueError, match="run_rl trains ppo, grpo or rloo"):
        run_rl(_cfg(str(tmp_path), ckpt, "grpo", 1, "task=sft"), console=False)
    with pytest.raises(ValueError, match="post.reward_model"):
        run_rl(_cfg(str(tmp_path), ckpt, "grpo", 1, f"post.reward_model={tmp_path}/nothing"), console=False)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "Repeat these words exactly.\\n\\none two"}\n')
    with pytest.raises(ValueError, match="needs prompts with a task and an answer"):
        run_rl(_cfg(str(tmp_path), ckpt, "grpo", 1, f"post.data=[{prompts}]", "post.eval_examples=4"),
               console=False)
    prompts.write_text('{"prompt": "Repeat these words exactly.\\n\\none two", "task": "copy", '
                       '"answer": "one two"}\n{"oops": 1}\n')
    with pytest.raises(ValueError, match="prompts.jsonl:2"):
        run_rl(_cfg(str(tmp_path), ckpt, "grpo", 1, f"post.data=[{prompts}]"), console=False)


@pytest.mark.parametrize("line, message", [  # a prompt too long is dropped and counted: test_s12_posttrain.py
    ({"prompt": "Repeat these words exactly.\n\none two", "task": "copy_words", "answer": "one two"},
     r"prompts\.jsonl:2: unknown task 'copy_words' in an RL prompt record \(built-in tasks: copy, "),
    ({"prompt": "Repeat these words exactly.\n\none two", "task": "copy", "answer": ["one", "two"]},
     r"prompts\.jsonl:2: the 'answer' of an RL prompt record must be a string"),
    ({"prompt": "Repeat these words exactly.\n\none two", "task": "copy"},
     r"prompts\.jsonl:2: post\.reward_model=task needs prompts with a task and an answer"),
])
@pytest.mark.parametrize("where", ["data", "val_data"])
def test_bad_prompt_records_are_refused_when_read_with_file_line(sft_model, tmp_path, line, message, where):
    """An unknown task or a bad answer used to fail only once sampling or scoring reached
    that record (possibly many steps in), with no file:line; now the record is refused before the first step,
    as malformed lines are (all counted, then refused with file:line)."""
    d, ckpt, _ = sft_model
    if where == "val_data" and "answer" not in line:
        pytest.skip("held-out records are not scored by the task reward unless they have task and answer")
    good = {"prompt": "Repeat these words exactly.\n\none two", "task": "copy", "answer": "one two"}
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps(good) + "\n" + json.dumps(line) + "\n")
    files = ([f"post.data=[{prompts}]"] if where == "data" else
             [f"post.data=[{d}/train.jsonl]", f"post.val_data=[{prompts}]"])
    with pytest.raises(ValueError, match=message):
        run_rl(_cfg(str(tmp_path), ckpt, "grpo", 3, "post.prompts_per_step=2", "post.eval_examples=4", *files),
               console=False)
    assert not list(tmp_path.glob("*/metrics.jsonl"))  # refused before the first step


def test_integer_answers_and_known_tasks_are_kept(sft_model, tmp_path):
    from fastlm.posttrain.rl import _read_prompts
    _, _, tok = sft_model
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "Add: 1 + 2", "task": "add", "answer": 3}) + "\n")
    ((ids, meta, ex),) = _read_prompts([str(prompts)], tok, max_seq_len=96, max_new_tokens=16, need_task=True)
    assert meta == {"task": "add", "answer": "3"} and ex.answer == "3"


def test_reward_model_scores_rollouts(sft_model, tmp_path):
    """post.reward_model = a reward checkpoint (and "auto" finds the newest reward run in out): the logged
    mean reward is the reward model's score of prompt + response + <|assistant_end|>."""
    from fastlm.models.reward import RewardModel
    from fastlm.posttrain.reward import score_ids
    d, ckpt, tok = sft_model
    policy, _, _ = load_model(ckpt)
    torch.manual_seed(3)
    rm = RewardModel.from_gpt(policy)
    torch.nn.init.normal_(rm.score.weight, std=1.0)
    out = str(tmp_path)
    rckpt = save_checkpoint(os.path.join(out, "reward-x", "checkpoints"), 1, model_state=rm.state_dict(),
                            optimizer_state=None, tokenizer_path=os.path.join(ckpt, "tokenizer.fastlm"),
                            meta={"model_config": config_to_dict(rm.config), "train_config": {"task": "reward"}})
    res = run_rl(_cfg(out, ckpt, "grpo", 1, "post.reward_model=auto", "post.prompts_per_step=2",
                      "post.eval_examples=4", "post.temperature=0", "post.kl_coef=0", "optim.lr=0"), console=False)
    logged = [r for r in _metrics(res.run_dir) if "reward/mean" in r][0]["reward/mean"]
    assert load_checkpoint(res.checkpoint).meta["reward_model"] == rckpt
    # greedy rollouts of the unchanged policy: recompute what the reward model must have said
    from fastlm.posttrain.rl import PromptSource, _prompts
    cfg = _cfg(out, ckpt, "grpo", 1, "post.prompts_per_step=2")
    items = PromptSource(_prompts(cfg, tok)[0], cfg.seed).next(2)
    eos = tok.special_id("<|assistant_end|>")
    prompts = [ids for ids, _ in items]
    responses = sample_responses(policy, prompts, max_new_tokens=16, eos_id=eos, pad_id=0, temperature=0)
    rows = [p + r + ([] if r[-1] == eos else [eos]) for p, r in zip(prompts, responses)]
    assert logged == pytest.approx(float(score_ids(rm.eval(), rows).mean()), abs=1e-5)
    other = Tokenizer.train_from_iterator(["something else entirely"] * 3, 300)
    other.save(str(tmp_path / "other.fastlm"))
    save_checkpoint(str(tmp_path / "bad" / "checkpoints"), 1, model_state=rm.state_dict(), optimizer_state=None,
                    tokenizer_path=str(tmp_path / "other.fastlm"),
                    meta={"model_config": config_to_dict(rm.config), "train_config": {"task": "reward"}})
    with pytest.raises(ValueError, match="another tokenizer"):
        run_rl(_cfg(out, ckpt, "grpo", 1, f"post.reward_model={tmp_path / 'bad'}"), console=False)
