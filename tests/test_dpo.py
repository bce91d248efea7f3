"""DPO: the sigmoid loss vs TRL's formula, response log-probs vs a direct computation, precomputed vs online
reference, resume, and end to end (DPO raises the held-out chosen-vs-rejected margin and accuracy)."""
import math
import os
import shutil

import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402

from fastlm.models import GPT, GPTConfig  # noqa: E402
from fastlm.posttrain.dpo import DPOObjective, dpo_loss, evaluate_dpo, pair_logprobs, precompute_reference  # noqa: E402
from fastlm.posttrain.pairs import collate_pairs, render_pair  # noqa: E402
from fastlm.train.distributed import DistInfo  # noqa: E402
from test_reward import TOK, _metrics, pairs_config  # noqa: E402
from train_fixtures import train_in_torchrun  # noqa: E402

torch.set_num_threads(1)


def trl_dpo_loss(pi_c, pi_r, ref_c, ref_r, beta, label_smoothing=0.0):
    """TRL DPOTrainer.dpo_loss, loss_type="sigmoid", transcribed."""
    pi_logratios = pi_c - pi_r
    ref_logratios = ref_c - ref_r
    logits = pi_logratios - ref_logratios
    losses = (-F.logsigmoid(beta * logits) * (1 - label_smoothing) - F.logsigmoid(-beta * logits) * label_smoothing)
    chosen_rewards = beta * (pi_c - ref_c).detach()
    rejected_rewards = beta * (pi_r - ref_r).detach()
    return losses, chosen_rewards, rejected_rewards


def test_loss_on_hand_made_numbers():
    pi_c, pi_r = torch.tensor([-3.0, -2.0]), torch.tensor([-5.0, -1.0])
    ref_c, ref_r = torch.tensor([-4.0, -2.0]), torch.tensor([-4.0, -2.0])
    losses, rc, rr = dpo_loss(pi_c, pi_r, ref_c, ref_r, beta=0.5)
    # pair 0: (1) - (-1) = 2 -> -logsigmoid(1); pair 1: 0 - 1 = -1 -> -logsigmoid(-0.5)
    assert losses.tolist() == pytest.approx([math.log1p(math.exp(-1.0)), math.log1p(math.exp(0.5))], abs=1e-6)
    assert rc.tolist() == pytest.approx([0.5, 0.0]) and rr.tolist() == pytest.approx([-0.5, 0.5])


@pytest.mark.parametrize("beta", [0.01, 0.1, 1.0])
def test_loss_matches_trl(beta):
    g = torch.Generator().manual_seed(0)
    pi_c, pi_r = (-20 * torch.rand(13, generator=g)).requires_grad_(), (-20 * torch.rand(13, generator=g)).requires_grad_()
    ref_c, ref_r = -20 * torch.rand(13, generator=g), -20 * torch.rand(13, generator=g)
    ours = dpo_loss(pi_c, pi_r, ref_c, ref_r, beta=beta)
    theirs = trl_dpo_loss(pi_c, pi_r, ref_c, ref_r, beta)
    for a, b in zip(ours, theirs):
        assert torch.allclose(a, b, atol=1e-6)
    ga = torch.autograd.grad(ours[0].sum(), (pi_c, pi_r))
    gb = torch.autograd.grad(theirs[0].sum(), (pi_c, pi_r))
    for a, b in zip(ga, gb):
        assert torch.allclose(a, b, atol=1e-7)
    # d loss / d pi_c = -beta * sigmoid(-beta * logits)
    logits = (pi_c - ref_c) - (pi_r - ref_r)
    assert torch.allclose(ga[0], -beta * torch.sigmoid(-beta * logits.detach()), atol=1e-7)


def test_pair_logprobs_sum_response_tokens_only():
    torch.manual_seed(0)
    model = GPT(GPTConfig.named("tiny", vocab_size=TOK.n_vocab, n_layer=1, d_model=32, n_head=2))
    pairs = [render_pair(TOK, {"prompt": "2+2?", "chosen": "4", "rejected": "five"}),
             render_pair(TOK, {"prompt": "a longer prompt", "chosen": "yes indeed", "rejected": "no"})]
    for kernels in ("fastlm", "torch"):
        lc, lr = pair_logprobs(model, collate_pairs(pairs), kernels=kernels)
        for i, p in enumerate(pairs):
            for got, row in ((lc[i], p.chosen), (lr[i], p.rejected)):
                with torch.no_grad():
                    logp = torch.log_softmax(model(torch.tensor([row]), kernels="torch")[0].float(), -1)
                want = sum(float(logp[t - 1, row[t]]) for t in range(p.prompt_len, len(row)))
                assert float(got.detach()) == pytest.approx(want, abs=1e-4)


def test_precomputed_and_online_reference_agree(tmp_path):
    over = dict(micro_batch=4, post={"task_examples": 24, "eval_examples": 8})
    objs = {}
    for ref in ("precompute", "online"):
        cfg = pairs_config(tmp_path, "dpo", **over)
        cfg.post.reference = ref
        objs[ref] = DPOObjective(cfg, DistInfo(), run_dir=str(tmp_path / ref), log=lambda *a: None)
    a, b = objs["precompute"], objs["online"]
    assert a.ref is None and b.ref is not None
    ba, bb = a.next_micro(4), b.next_micro(4)
    assert torch.equal(ba["input_ids"], bb["input_ids"])
    with torch.no_grad():  # the policy moves away from the reference, identically in both
        for m in (a.model, b.model):
            m.tok_emb.weight.mul_(1.5)
    la, _, ma = a.loss(a.model, ba, kernels="fastlm")
    lb, _, mb = b.loss(b.model, bb, kernels="fastlm")
    assert float(la.detach()) == pytest.approx(float(lb.detach()), abs=1e-5)
    assert ma == pytest.approx(mb, abs=1e-5)
    assert float(la.detach()) != pytest.approx(4 * math.log(2), abs=1e-3)
    ea, eb = a.evaluate(a.model), b.evaluate(b.model)
    assert ea == pytest.approx(eb, abs=1e-5)


def test_rpo_adds_the_chosen_per_token_nll(tmp_path):
    """post.rpo_alpha: loss = DPO + alpha x (-log p(chosen) / chosen tokens), per pair, computed directly."""
    cfg = pairs_config(tmp_path, "dpo", micro_batch=4, post={"task_examples": 24, "eval_examples": 8})
    obj = DPOObjective(cfg, DistInfo(), run_dir=str(tmp_path / "rpo"), log=lambda *a: None)
    batch = obj.next_micro(4)
    with torch.no_grad():
        obj.model.tok_emb.weight.mul_(1.5)  # away from the reference
    plain, n, m0 = obj.loss(obj.model, batch, kernels="fastlm")
    obj.cfg.post.rpo_alpha = 0.7
    rpo, n2, m1 = obj.loss(obj.model, batch, kernels="fastlm")
    B = batch["input_ids"].shape[0] // 2
    nll = 0.0
    for i in range(B):  # by hand: the chosen row's response tokens, log_softmax of the plain logits
        ids, labels = batch["input_ids"][i], batch["labels"][i]
        with torch.no_grad():
            logp = torch.log_softmax(obj.model(ids[None], kernels="torch")[0].float(), -1)
        pos = (labels != -100).nonzero().flatten().tolist()
        assert pos
        nll += -sum(float(logp[t, labels[t]]) for t in pos) / len(pos)
    assert n == n2 == B and float(rpo.detach()) == pytest.approx(float(plain.detach()) + 0.7 * nll, abs=1e-4)
    assert m1["nll/chosen"] == pytest.approx(nll, abs=1e-4) and "nll/chosen" not in m0


def test_policy_equal_to_reference_gives_log2_and_zero_rewards():
    torch.manual_seed(0)
    model = GPT(GPTConfig.named("tiny", vocab_size=TOK.n_vocab, n_layer=1, d_model=32, n_head=2))
    pairs = [render_pair(TOK, {"prompt": "p%d" % i, "chosen": "c" * i, "rejected": "r"}) for i in range(1, 6)]
    precompute_reference(model, pairs, device=torch.device("cpu"), kernels="fastlm", batch=2)
    r = evaluate_dpo(model, pairs, beta=0.1, batch=3)
    assert r["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert r["rewards/margin"] == pytest.approx(0.0, abs=1e-5) and r["rewards/accuracy"] == 0.0 and r["n"] == 5


def test_dpo_resume_is_exact(tmp_path):
    from fastlm.train.trainer import run
    from fastlm.train.checkpoint import load_model
    over = dict(max_steps=4, log_every=1, micro_batch=4, optim={"warmup_steps": 1},
                post={"task_examples": 40, "eval_examples": 8})
    full = run(pairs_config(tmp_path, "dpo", run_name="full", **over), console=False)
    run(pairs_config(tmp_path, "dpo", run_name="part", ckpt_every=2, **over), console=False)
    part_dir = os.path.join(str(tmp_path / "runs"), "part")
    shutil.rmtree(os.path.join(part_dir, "checkpoints", "step-00000004"))
    resumed = run(pairs_config(tmp_path, "dpo", run_name="part", ckpt_every=2, **over), resume=part_dir,
                  console=False)
    a, _, meta = load_model(full.checkpoint)
    b, _, _ = load_model(resumed.checkpoint)
    assert meta["model_config"]["kind"] == "gpt"
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), k


@pytest.mark.slow
def test_dpo_raises_held_out_margin_and_accuracy(tmp_path):
    from fastlm.train.trainer import run
    res = run(pairs_config(tmp_path, "dpo", max_steps=250, eval_every=250), console=False)
    val = [m for m in _metrics(res.run_dir) if "val/rewards/margin" in m]
    first, last = val[0], val[-1]
    assert first["step"] == 0 and first["val/rewards/margin"] == pytest.approx(0.0, abs=1e-4)
    assert first["val/loss"] == pytest.approx(math.log(2), abs=1e-4)
    print("dpo held-out:", last)
    assert last["val/rewards/margin"] > 1.0, last
    assert last["val/rewards/accuracy"] > 0.85, last
    assert last["val/loss"] < 0.5 * math.log(2)
    assert last["val/rewards/chosen"] > last["val/rewards/rejected"]
    train = [m for m in _metrics(res.run_dir) if "rewards/margin" in m]
    assert {"rewards/chosen", "rewards/rejected", "rewards/accuracy", "train/loss"} <= set(train[-1])


def test_dpo_refuses_a_reward_model_as_policy(tmp_path):
    from fastlm.models import RewardModel, config_to_dict
    from fastlm.tokenizer import Tokenizer
    from fastlm.train.checkpoint import save_checkpoint
    cfg = pairs_config(tmp_path, "dpo", micro_batch=4, post={"task_examples": 8, "eval_examples": 4})
    rm = RewardModel(GPTConfig.named("tiny", vocab_size=Tokenizer.from_file(cfg.data.tokenizer).n_vocab, n_layer=1,
                                     d_model=32, n_head=2, max_seq_len=64))
    ckpt = save_checkpoint(str(tmp_path / "rm" / "checkpoints"), 1, model_state=rm.state_dict(), optimizer_state=None,
                           meta={"model_config": config_to_dict(rm.config)}, tokenizer_path=cfg.data.tokenizer)
    cfg.post.init_from = ckpt
    with pytest.raises(ValueError, match="DPO trains a causal LM policy"):
        DPOObjective(cfg, DistInfo(), run_dir=str(tmp_path / "dpo"), log=lambda *a: None)


@pytest.mark.slow
@pytest.mark.parametrize("task", ["reward", "dpo"])
def test_ddp_matches_one_process(tmp_path, task):
    """2 gloo ranks x 2 pairs = 1 process x 4 pairs: same train metrics and val metrics (strided val shares)."""
    curves = []
    for nproc, mb in ((2, 2), (1, 4)):
        cfg = pairs_config(tmp_path, task, out=str(tmp_path / f"n{nproc}"), micro_batch=mb, max_steps=3,
                           eval_every=3, log_every=1, post={"task_examples": 40, "eval_examples": 9})
        train_in_torchrun(tmp_path, cfg, nproc=nproc)
        rows = _metrics(os.path.join(str(tmp_path / f"n{nproc}"), task))
        curves.append({(m["step"], k): v for m in rows for k, v in m.items()
                       if k.startswith(("train/", "val/", "rewards/"))})
    assert curves[0].keys() == curves[1].keys() and len(curves[0]) >= 8
    for k in curves[0]:
        assert curves[0][k] == pytest.approx(curves[1][k], rel=1e-4, abs=1e-6), k
