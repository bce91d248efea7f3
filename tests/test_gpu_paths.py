"""The trainer and post-training on a CUDA GPU: bf16 autocast with fastlm's kernels learns, reports
MFU, checkpoints and resumes; fastlm kernels vs plain PyTorch inside the real model; SFT -> DPO and
GRPO on a built-in task. Skipped without a GPU; tools/gpu_check.sh runs them on the lent machine."""
import json
import math
import os
import shutil

import pytest

torch = pytest.importorskip("torch")

from train_fixtures import make_shards, tiny_config  # noqa: E402

from fastlm.ops import _dispatch  # noqa: E402
from fastlm.train.trainer import peak_flops, run  # noqa: E402

CUDA = torch.cuda.is_available() and _dispatch.cuda_module() is not None
pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU and fastlm._cuda")]

# Head dim 64, so attention takes fastlm's flash kernel (bf16 under autocast).
GPU_GPT = {"n_layer": 2, "n_head": 2, "d_model": 128, "max_seq_len": 128}


def _metrics(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("gpu-shards"))
    make_shards(root)
    return root


def _cfg(data_root, out, **over):
    base = dict(device="cuda", max_steps=60, eval_every=30, log_every=10, ckpt_every=30, keep_last=5,
                micro_batch=16, data={"seq_len": 128}, model={"overrides": dict(GPU_GPT)},
                optim={"lr": 3e-3, "warmup_steps": 5})
    for k, v in over.items():
        base[k] = {**base[k], **v} if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return tiny_config(data_root, out, **base)


def test_cuda_bf16_run_learns_reports_mfu_and_resumes(data_root, tmp_path):
    cfg = _cfg(data_root, str(tmp_path / "a"))
    a = run(cfg, console=False)
    assert a.step == 60 and a.skipped == 0
    rows = _metrics(a.run_dir)
    vals = [m["val/loss"] for m in rows if "val/loss" in m]
    assert len(vals) >= 2 and all(math.isfinite(v) for v in vals) and vals[-1] < vals[0] - 0.3, vals
    train = [m for m in rows if "train/loss" in m]
    if peak_flops(torch.device("cuda"), "bf16") is not None:  # a card in the MFU table
        assert all(m["mfu"] is not None and 0 < m["mfu"] < 1 for m in train), train[-1]
    assert a.checkpoint.endswith("step-00000060")
    # Resume from step 30 in a copy of the run: the same curve, within the run-to-run noise of
    # the attention backward's fp32 atomics (not bit-exact on a GPU).
    b_dir = str(tmp_path / "b" / os.path.basename(a.run_dir))
    shutil.copytree(a.run_dir, b_dir)
    shutil.rmtree(os.path.join(b_dir, "checkpoints", "step-00000060"))
    b = run(cfg, resume=os.path.join(b_dir, "checkpoints", "step-00000030"), console=False)
    assert b.step == 60 and b.run_dir == b_dir
    assert b.val["loss"] == pytest.approx(a.val["loss"], rel=2e-2)


def test_cuda_fastlm_kernels_match_torch_in_the_trainer(data_root, tmp_path):
    over = dict(max_steps=40, eval_every=0, ckpt_every=0)
    fused = run(_cfg(data_root, str(tmp_path / "f"), **over), console=False)
    plain = run(_cfg(data_root, str(tmp_path / "t"), model={"kernels": "torch"}, **over),
                console=False)
    lf = [m["train/loss"] for m in _metrics(fused.run_dir) if "train/loss" in m]
    lt = [m["train/loss"] for m in _metrics(plain.run_dir) if "train/loss" in m]
    assert len(lf) == len(lt) == 4
    for x, y in zip(lf, lt):  # bf16 on both sides: close, not equal
        assert x == pytest.approx(y, rel=3e-2), (lf, lt)
    assert fused.val["loss"] == pytest.approx(plain.val["loss"], rel=3e-2)


def test_cuda_sft_then_dpo_and_grpo(tmp_path):
    """Random tiny GPT -> SFT on `copy` (exact match >= 0.5, as the CPU test) -> DPO and GRPO runs
    from it on the GPU (finite losses, checkpoints)."""
    from fastlm.config import from_dict
    from fastlm.posttrain.tasks import exact_match, get_task
    from fastlm.tokenizer import Tokenizer
    from fastlm.train.checkpoint import load_model
    from fastlm.train.config import TrainConfig

    texts = [ex.prompt + " " + ex.answer for t in ("copy", "reverse", "sort", "add")
             for ex in get_task(t).examples("train", 300, 0)]
    tok = Tokenizer.train_from_iterator(texts, 400)
    tok.save(str(tmp_path / "tok.fastlm"))
    common = {"out": str(tmp_path), "device": "cuda", "eval_every": 0, "ckpt_every": 0,
              "log_every": 5, "sample_tokens": 8, "plot": False,
              "data": {"tokenizer": str(tmp_path / "tok.fastlm"), "seq_len": 64},
              "model": {"size": "tiny", "overrides": {"n_layer": 2, "n_head": 2, "d_model": 128,
                                                      "max_seq_len": 64}}}
    sft = run(from_dict(TrainConfig, {
        **common, "task": "sft", "run_name": "sft", "micro_batch": 16, "max_steps": 300,
        "optim": {"lr": 1e-3, "warmup_steps": 10, "schedule": "constant"},
        "post": {"init_from": "none", "tasks": ["copy"], "task_examples": 2000,
                 "eval_examples": 100, "max_new_tokens": 12}}), console=False)
    assert sft.val["exact_match"] >= 0.5, sft.val
    post = {"init_from": sft.checkpoint, "tasks": ["copy"], "eval_examples": 50,
            "max_new_tokens": 12}
    dpo = run(from_dict(TrainConfig, {
        **common, "task": "dpo", "run_name": "dpo", "micro_batch": 8, "max_steps": 10,
        "optim": {"lr": 1e-4, "warmup_steps": 0}, "post": {**post, "rpo_alpha": 1.0}}),
        console=False)
    grpo = run(from_dict(TrainConfig, {
        **common, "task": "grpo", "run_name": "grpo", "max_steps": 5,
        "optim": {"lr": 1e-5, "warmup_steps": 0},
        "post": {**post, "reward_model": "task", "prompts_per_step": 8, "samples_per_prompt": 4,
                 "temperature": 0.7}}), console=False)
    for r, name in ((dpo, "dpo"), (grpo, "grpo")):
        assert r.checkpoint is not None and r.skipped == 0, name
        losses = [m["train/loss"] for m in _metrics(r.run_dir) if "train/loss" in m]
        assert losses and all(math.isfinite(x) for x in losses), (name, losses)
    # neither stage may wreck what SFT learned in so few, small steps
    assert dpo.val["rewards/accuracy"] >= 0.5, dpo.val
    dpo_em = exact_match(load_model(dpo.checkpoint)[0], tok, get_task("copy").examples("val", 50, 0),
                         max_new_tokens=12)["accuracy"]
    assert dpo_em >= sft.val["exact_match"] - 0.2, (sft.val, dpo_em)
    assert grpo.val["exact_match"] >= sft.val["exact_match"] - 0.2, (sft.val, grpo.val)
