"""Tests for fastlm.train.checkpoint: exact round trips (model, AdamW state, rng), DCP set_state_dict, keep_last,
crash leftovers, every corruption refused naming the file, tied weights, models of another shape refused."""
import json
import os
import random
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from safetensors import safe_open  # noqa: E402
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict  # noqa: E402

from fastlm.models import GPT, Encoder, EncoderConfig, GPTConfig, config_to_dict  # noqa: E402
from fastlm.tokenizer import Tokenizer  # noqa: E402
from fastlm.train import checkpoint as ck  # noqa: E402
from fastlm.train.checkpoint import (CheckpointError, check_model_state, latest_checkpoint,  # noqa: E402
                                     load_checkpoint, load_model, rng_state, save_checkpoint, set_rng_state)
from fastlm.train.config import TrainConfig  # noqa: E402
from train_fixtures import edit_state  # noqa: E402

V = 61
OPTS = StateDictOptions(full_state_dict=True, cpu_offload=True)


def gpt(**kw):
    base = dict(vocab_size=V, n_layer=1, n_head=2, d_model=32, max_seq_len=16)
    base.update(kw)
    return GPT(GPTConfig(**base))


def trained(model, steps=3, seed=0):
    """The model and an AdamW after a few steps (so exp_avg/exp_avg_sq/step are all non-trivial)."""
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1)
    x = torch.randint(0, V, (2, 8), generator=torch.Generator().manual_seed(seed))
    x = x.to(next(model.parameters()).device)
    for _ in range(steps):
        model(x, x).backward()
        opt.step()
        opt.zero_grad()
    return model, opt


@pytest.fixture(scope="module")
def tok_path(tmp_path_factory):
    p = str(tmp_path_factory.mktemp("tok") / "tokenizer.fastlm")
    Tokenizer([bytes([b]) for b in range(256)], special_tokens={"<|bos|>": 256}).save(p)
    return p


def meta_of(model, **extra):
    return {"model_config": config_to_dict(model.config), "train_config": TrainConfig().to_dict(), **extra}


def save(root, step, model, opt=None, tok=None, keep_last=0, **extra):
    ms, os_ = get_state_dict(model, opt, options=OPTS) if opt is not None else (model.state_dict(), None)
    return save_checkpoint(str(root), step, model_state=ms, optimizer_state=os_, meta=meta_of(model, **extra),
                           tokenizer_path=tok, keep_last=keep_last)


def assert_same(a, b, where="state"):
    """Equal nested structures; tensors torch.equal with the same dtype; tuples stay tuples."""
    assert type(a) is type(b), f"{where}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert list(a) == list(b) or set(a) == set(b), f"{where}: keys {sorted(map(str, a))} != {sorted(map(str, b))}"
        for k in a:
            assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def test_round_trip_model_optimizer_meta(tmp_path, tok_path):
    model, opt = trained(gpt())
    ms, os_ = get_state_dict(model, opt, options=OPTS)
    meta = meta_of(model, data_state={"epoch": 1, "pos": 37}, rng=rng_state(), loop={"tokens": 1234, "best": None},
                   numpy={"n": np.int64(5), "x": np.float32(0.5)})
    path = save_checkpoint(str(tmp_path / "checkpoints"), 3, model_state=ms, optimizer_state=os_, meta=meta,
                           tokenizer_path=tok_path, keep_last=2)
    assert os.path.basename(path) == "step-00000003"
    assert sorted(os.listdir(path)) == ["model.safetensors", "optimizer.safetensors", "state.json", "tokenizer.fastlm"]
    c = load_checkpoint(str(tmp_path))  # a run dir: its latest checkpoint
    assert c.path == path and c.step == 3
    assert_same(dict(c.model_state), dict(ms), "model_state")
    assert_same(c.optimizer_state, os_, "optimizer_state")
    meta["numpy"] = {"n": 5, "x": 0.5}  # numpy scalars are stored as numbers
    for k, v in meta.items():
        assert c.meta[k] == json.loads(json.dumps(v)), k
    with open(tok_path, "rb") as a, open(c.tokenizer_path, "rb") as b:
        assert a.read() == b.read()
    with safe_open(os.path.join(path, "optimizer.safetensors"), "pt") as f:
        assert "state/blocks.0.attn.q_proj.weight/exp_avg" in set(f.keys())


def test_set_state_dict_into_fresh_model_resumes_exactly(tmp_path):
    model, opt = trained(gpt())
    path = save(tmp_path, 3, model, opt)
    c = load_checkpoint(path)
    fresh = gpt()
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=5.0)  # lr etc. come back from the checkpoint
    set_state_dict(fresh, fresh_opt, model_state_dict=c.model_state, optim_state_dict=c.optimizer_state, options=OPTS)
    assert fresh.lm_head.weight is fresh.tok_emb.weight
    assert fresh_opt.param_groups[0]["lr"] == 1e-2
    x = torch.randint(0, V, (2, 8), generator=torch.Generator().manual_seed(5))
    for m, o in ((model, opt), (fresh, fresh_opt)):  # one more step on both: identical weights
        m(x, x).backward()
        o.step()
    for (k, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), k


def test_plain_optimizer_state_dict_round_trip(tmp_path):
    model, opt = trained(gpt(tie_embeddings=False))
    sd = opt.state_dict()  # int-keyed layout also stores exactly
    path = save_checkpoint(str(tmp_path), 1, model_state=model.state_dict(), optimizer_state=sd,
                           meta=meta_of(model), tokenizer_path=None)
    got = load_checkpoint(path).optimizer_state
    assert_same(got, sd, "optimizer")
    torch.optim.AdamW(gpt(tie_embeddings=False).parameters()).load_state_dict(got)


def test_rng_round_trip():
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.standard_normal()  # leaves a cached gaussian in numpy's legacy state
    s = json.loads(json.dumps(rng_state()))  # JSON-safe
    first = (random.random(), random.gauss(0, 1), np.random.rand(3).tolist(), np.random.standard_normal(),
             torch.rand(4).tolist(), torch.randint(0, 1000, (3,)).tolist())
    set_rng_state(s)
    again = (random.random(), random.gauss(0, 1), np.random.rand(3).tolist(), np.random.standard_normal(),
             torch.rand(4).tolist(), torch.randint(0, 1000, (3,)).tolist())
    assert first == again
    with pytest.raises(CheckpointError, match="rng state"):
        set_rng_state({"torch": "not base64!"})


def test_keep_last(tmp_path):
    model = gpt()
    for step in range(1, 6):
        save(tmp_path, step * 10, model, keep_last=2)
    assert sorted(os.listdir(tmp_path)) == ["step-00000040", "step-00000050"]
    assert latest_checkpoint(str(tmp_path)).endswith("step-00000050")
    save(tmp_path, 60, model, keep_last=0)  # 0 keeps all
    assert len(os.listdir(tmp_path)) == 3


def test_crash_leftovers_are_ignored_then_cleaned(tmp_path):
    model = gpt()
    good = save(tmp_path, 10, model)
    shutil.copytree(good, str(tmp_path / "step-00000030.tmp-4242"))      # crash before the rename
    partial = str(tmp_path / "step-00000020")
    shutil.copytree(good, partial)
    os.remove(os.path.join(partial, "state.json"))                       # final name, never completed
    cut = str(tmp_path / "step-00000025")
    shutil.copytree(good, cut)
    with open(os.path.join(cut, "model.safetensors"), "r+b") as f:       # state.json there, a file cut short
        f.truncate(100)
    assert latest_checkpoint(str(tmp_path)) == good
    save(tmp_path, 40, model)
    assert not (tmp_path / "step-00000030.tmp-4242").exists()
    assert latest_checkpoint(str(tmp_path)).endswith("step-00000040")


def test_crash_during_swap_keeps_old_copy(tmp_path, monkeypatch):
    model = gpt()
    first = save(tmp_path, 10, model)
    os.replace(first, first + ".old-777")  # crash between "step-N -> .old" and ".tmp -> step-N"
    assert latest_checkpoint(str(tmp_path)) == first + ".old-777"
    save(tmp_path, 20, model)
    assert sorted(os.listdir(tmp_path)) == ["step-00000010", "step-00000020"]  # put back by the next save

    real = os.replace

    def failing(src, dst):
        if ".tmp-" in str(src):
            raise OSError("simulated crash")
        return real(src, dst)

    monkeypatch.setattr(ck.os, "replace", failing)
    with pytest.raises(OSError, match="simulated"):
        save(tmp_path, 20, gpt())  # re-save of an existing step fails half way: the old one is restored
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["step-00000010", "step-00000020"]
    load_checkpoint(str(tmp_path / "step-00000020"))


def test_failed_save_leaves_previous_set(tmp_path, monkeypatch):
    model = gpt()
    save(tmp_path, 10, model)
    monkeypatch.setattr(ck, "_copy_tokenizer", lambda src, dst: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        save(tmp_path, 20, model, tok="x", keep_last=1)
    assert os.listdir(tmp_path) == ["step-00000010"]


def test_resave_same_step_replaces(tmp_path):
    save(tmp_path, 10, gpt(), loop={"v": 1})
    save(tmp_path, 10, gpt(), loop={"v": 2})
    assert os.listdir(tmp_path) == ["step-00000010"]
    assert load_checkpoint(str(tmp_path)).meta["loop"] == {"v": 2}


def _run_until_crash(k, fn):
    """Run ``fn`` in a forked child killed (``os._exit``: no cleanup, as SIGKILL) at its k-th file-system
    operation; a k-th ``rmtree`` first deletes one file (a deletion cut short). True if ``fn`` finished."""
    import safetensors.torch
    pid = os.fork()
    if pid == 0:  # child
        try:
            count = [0]

            def hook(mod, name):
                orig = getattr(mod, name)

                def wrapped(*args, **kwargs):
                    if count[0] == k:
                        if name == "rmtree":
                            for dirpath, _, files in os.walk(args[0]):
                                if files:
                                    os.remove(os.path.join(dirpath, files[0]))
                                    break
                        os._exit(3)
                    count[0] += 1
                    return orig(*args, **kwargs)
                setattr(mod, name, wrapped)

            for mod, name in ((os, "replace"), (os, "makedirs"), (os, "fsync"), (shutil, "rmtree"),
                              (shutil, "copyfile"), (safetensors.torch, "save_file")):
                hook(mod, name)
            fn()
            os._exit(0)
        except BaseException:
            os._exit(4)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    assert code in (0, 3), f"child failed with exit code {code}"
    return code == 0


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.parametrize("scenario", ["new step", "same step again"])
def test_kill_at_every_point_of_a_save(tmp_path, tok_path, scenario):
    """Kill a save at each of its file-system operations: the complete checkpoints are always the old set
    or the new one (each passing the full hash check), and the next save leaves no debris."""
    torch.set_num_threads(1)
    model = gpt()
    template = tmp_path / "template"
    for step in (10, 20):
        save(template, step, model, tok=tok_path, keep_last=2, loop={"v": 1})
    step, allowed = ((30, [[10, 20], [10, 20, 30], [20, 30]]) if scenario == "new step" else (20, [[10, 20]]))
    for k in range(100):
        root = tmp_path / f"k{k}"
        shutil.copytree(template, root)
        finished = _run_until_crash(k, lambda: save(root, step, model, tok=tok_path, keep_last=2, loop={"v": 2}))
        found = ck.list_checkpoints(str(root))
        steps = [load_checkpoint(p).step for p in found]  # full verification of every visible checkpoint
        assert steps in allowed, (k, sorted(os.listdir(root)))
        if finished:
            assert load_checkpoint(str(root)).meta["loop"] == {"v": 2}
            break
        save(root, 40, model, tok=tok_path, keep_last=2)  # the next save cleans up
        assert sorted(os.listdir(root)) == [os.path.basename(p) for p in ck.list_checkpoints(str(root))], k
        assert len(os.listdir(root)) == 2, k
    else:
        pytest.fail("the save never finished")
    assert k > 10  # every operation was a crash point once


def _flip_byte(p):
    with open(p, "r+b") as f:
        f.seek(os.path.getsize(p) - 1)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0xFF]))


def _truncate_consistently(path):
    """Cut model.safetensors short and fix state.json's size+hash: only the safetensors reader can tell."""
    p = os.path.join(path, "model.safetensors")
    with open(p, "r+b") as f:
        f.truncate(os.path.getsize(p) // 2)
    edit_state(path, lambda s: s["files"]["model.safetensors"].update(bytes=os.path.getsize(p),
                                                                          sha256=ck._sha256(p)))


def _write(p, data, mode="w"):
    with open(p, mode) as f:
        f.write(data)


STATE = r"state\.json"
CORRUPTIONS = {
    "missing file": (lambda p: os.remove(os.path.join(p, "optimizer.safetensors")), r"optimizer\.safetensors: missing"),
    "size": (lambda p: _write(os.path.join(p, "model.safetensors"), b"x", "ab"), r"model\.safetensors: .*bytes"),
    "hash": (lambda p: _flip_byte(os.path.join(p, "tokenizer.fastlm")), r"tokenizer\.fastlm: sha256"),
    "opt hash": (lambda p: _flip_byte(os.path.join(p, "optimizer.safetensors")), r"optimizer\.safetensors: sha256"),
    "truncated safetensors": (_truncate_consistently, r"model\.safetensors: cannot read safetensors"),
    "bad json": (lambda p: _write(os.path.join(p, "state.json"), "{not json"), STATE + ": not valid JSON"),
    "no state.json": (lambda p: os.remove(os.path.join(p, "state.json")), STATE + ": missing"),
    "format": (lambda p: edit_state(p, lambda s: s.update(format="x")), STATE + ": not a fastlm checkpoint"),
    "version": (lambda p: edit_state(p, lambda s: s.update(version=99)),
                STATE + ": unsupported checkpoint version 99"),
    "missing key": (lambda p: edit_state(p, lambda s: s.pop("model_config")),
                    STATE + ": missing key.*model_config"),
    "files entry": (lambda p: edit_state(p, lambda s: s["files"].pop("model.safetensors")),
                    STATE + ": 'files' does not list model\\.safetensors"),
    "path in files": (lambda p: edit_state(p, lambda s: s["files"].update({"../x": {"sha256": "", "bytes": 0}})),
                      r"plain file names"),
    # these three were Python tracebacks (AttributeError, ValueError) in load_checkpoint or Checkpoint.step
    "tied list": (lambda p: edit_state(p, lambda s: s.update(tied=["lm_head.weight"])),
                  STATE + ": 'tied' must map key names"),
    "step string": (lambda p: edit_state(p, lambda s: s.update(step="x")), STATE + ": 'step' must be an integer"),
    "optimizer number": (lambda p: edit_state(p, lambda s: s.update(optimizer=5)),
                         STATE + ": 'optimizer' must be an object or null"),
    "model_config list": (lambda p: edit_state(p, lambda s: s.update(model_config=[])),
                          STATE + ": 'model_config' must be an object"),
}


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_corruption_refused_naming_the_file(tmp_path, tok_path, name):
    model, opt = trained(gpt(), steps=1)
    path = save(tmp_path, 1, model, opt, tok=tok_path)
    corrupt, pattern = CORRUPTIONS[name]
    corrupt(path)
    with pytest.raises(CheckpointError, match=pattern):
        load_checkpoint(path)


def test_tied_weights_stored_once_and_restored(tmp_path):
    model = gpt()
    path = save(tmp_path, 1, model)
    with safe_open(os.path.join(path, "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert "tok_emb.weight" in keys and "lm_head.weight" not in keys
    loaded, _, meta = load_model(path)
    assert meta["tied"] == {"lm_head.weight": "tok_emb.weight"}
    assert loaded.lm_head.weight is loaded.tok_emb.weight
    x = torch.randint(0, V, (1, 8))
    assert torch.equal(loaded(x), model.eval()(x))

    untied = gpt(tie_embeddings=False)
    with safe_open(os.path.join(save(tmp_path / "u", 1, untied), "model.safetensors"), "pt") as f:
        assert {"tok_emb.weight", "lm_head.weight"} <= set(f.keys())
    # a gathered (FSDP-style) state dict holds two equal copies: still stored once
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    p = save_checkpoint(str(tmp_path / "g"), 1, model_state=sd, optimizer_state=None, meta=meta_of(model),
                        tokenizer_path=None)
    assert load_checkpoint(p).meta["tied"] == {"lm_head.weight": "tok_emb.weight"}


def test_encoder_tied_round_trip(tmp_path):
    enc = Encoder(EncoderConfig(vocab_size=V, n_layer=1, n_head=2, d_model=32, max_seq_len=16))
    path = save(tmp_path, 1, enc)
    loaded, _, meta = load_model(str(tmp_path))
    assert meta["tied"] == {"decoder.weight": "tok_emb.weight"}
    assert loaded.decoder.weight is loaded.tok_emb.weight
    for (k, a), b in zip(enc.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k
    assert path == latest_checkpoint(str(tmp_path))


def test_load_model_run_dir_with_tokenizer(tmp_path, tok_path):
    model, opt = trained(gpt())
    save(tmp_path / "run" / "checkpoints", 2, model, opt, tok=tok_path)
    save(tmp_path / "run" / "checkpoints", 4, model, opt, tok=tok_path)
    loaded, tok, meta = load_model(str(tmp_path / "run"))
    assert meta["step"] == 4 and not loaded.training
    assert tok.decode(tok.encode("hi")) == "hi"
    x = torch.randint(0, V, (1, 8))
    assert torch.equal(loaded(x), model.eval()(x))
    with pytest.raises(CheckpointError, match="no such directory"):
        load_model(str(tmp_path / "nope"))
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        load_model(str(tmp_path))


def test_other_shape_refused(tmp_path):
    small, big = gpt(), gpt(d_model=64)
    with pytest.raises(CheckpointError, match=r"shape mismatch: tok_emb.weight: \[61, 32\] in the checkpoint, "
                                              r"\[61, 64\] in the model"):
        check_model_state(big, small.state_dict())
    with pytest.raises(CheckpointError, match=r"missing \d+ key\(s\): blocks\.1\."):
        check_model_state(gpt(n_layer=2), small.state_dict())
    with pytest.raises(CheckpointError, match=r"unexpected \d+ key\(s\): blocks\.1\."):
        check_model_state(small, gpt(n_layer=2).state_dict())
    untied = gpt(tie_embeddings=False).state_dict()
    with pytest.raises(CheckpointError, match="lm_head.weight is tied to tok_emb.weight"):
        check_model_state(small, untied)
    # a checkpoint whose model_config does not match its weights: load_model names the checkpoint
    path = save_checkpoint(str(tmp_path), 1, model_state=small.state_dict(), optimizer_state=None,
                           meta=meta_of(big), tokenizer_path=None)
    with pytest.raises(CheckpointError, match=r"step-00000001 does not fit GPT.*shape mismatch"):
        load_model(path)
    edit_state(path, lambda s: s["model_config"].update(kind="rnn"))
    with pytest.raises(CheckpointError, match=r"state\.json: model_config: .*kind"):
        load_model(path)


def test_bad_arguments(tmp_path):
    model = gpt()
    sd = model.state_dict()
    with pytest.raises(ValueError, match="must not set"):
        save_checkpoint(str(tmp_path), 1, model_state=sd, optimizer_state=None,
                        meta={**meta_of(model), "step": 3}, tokenizer_path=None)
    with pytest.raises(ValueError, match=r"meta\['loop'\]\['t'\] is not JSON-safe"):
        save_checkpoint(str(tmp_path), 1, model_state=sd, optimizer_state=None,
                        meta={**meta_of(model), "loop": {"t": torch.ones(1)}}, tokenizer_path=None)
    with pytest.raises(ValueError, match="model_config"):
        save_checkpoint(str(tmp_path), 1, model_state=sd, optimizer_state=None, meta={}, tokenizer_path=None)
    with pytest.raises(ValueError, match="tokenizer_path"):
        save_checkpoint(str(tmp_path), 1, model_state=sd, optimizer_state=None, meta=meta_of(model),
                        tokenizer_path=str(tmp_path / "missing.fastlm"))
    assert os.listdir(tmp_path) == []
    # DDP / torch.compile wrappers' prefixes are dropped
    p = save_checkpoint(str(tmp_path), 1, model_state={f"module._orig_mod.{k}": v for k, v in sd.items()},
                        optimizer_state=None, meta=meta_of(model), tokenizer_path=None)
    load_model(p)


def _dist_worker(rank, world, tmp, mode):
    """Train 2 steps wrapped (DDP or FSDP2) on 2 gloo processes, save on rank 0, load back on every rank
    into a fresh wrapped model and check that one more step gives the same weights."""
    import torch.distributed as dist
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/pg", rank=rank, world_size=world)

    def wrap(seed):
        torch.manual_seed(seed)
        model = gpt()
        if mode == "ddp":
            from torch.nn.parallel import DistributedDataParallel
            return DistributedDataParallel(model)
        from torch.distributed.fsdp import fully_shard
        for block in model.blocks:
            fully_shard(block)
        return fully_shard(model)

    x = torch.randint(0, V, (2, 8), generator=torch.Generator().manual_seed(rank))
    model = wrap(0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(2):
        model(x, x).backward()
        opt.step()
        opt.zero_grad()
    ms, os_ = get_state_dict(model, opt, options=OPTS)
    if rank == 0:
        save_checkpoint(f"{tmp}/ckpt", 2, model_state=ms, optimizer_state=os_,
                        meta={"model_config": config_to_dict(gpt().config)}, tokenizer_path=None)
    dist.barrier()
    c = load_checkpoint(f"{tmp}/ckpt")
    saved = {k: v.clone() for k, v in c.model_state.items()}  # set_state_dict renames keys in place (DDP)
    fresh = wrap(1)
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=5.0)
    set_state_dict(fresh, fresh_opt, model_state_dict=c.model_state, optim_state_dict=c.optimizer_state, options=OPTS)
    for m, o in ((model, opt), (fresh, fresh_opt)):
        m(x, x).backward()
        o.step()
    a, _ = get_state_dict(model, opt, options=OPTS)
    b, _ = get_state_dict(fresh, fresh_opt, options=OPTS)
    if rank == 0:
        torch.save({"same": all(torch.equal(a[k], b[k]) for k in a), "saved": saved}, f"{tmp}/result.pt")
    # The trainer's teardown: every rank here, then the wrappers (which hold the group) collected
    # before the group goes; a bare destroy_process_group() let gloo abort a rank now and then.
    from fastlm.train.distributed import DistInfo, cleanup
    dist.barrier()
    del model, fresh, opt, fresh_opt, a, b
    cleanup(DistInfo(rank=rank, world_size=world, distributed=True))


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_distributed_save_resume_any_world_size(tmp_path, mode):
    import torch.multiprocessing as mp
    mp.spawn(_dist_worker, args=(2, str(tmp_path), mode), nprocs=2)
    result = torch.load(tmp_path / "result.pt")
    assert result["same"], "resume under 2 processes differs"
    c = load_checkpoint(str(tmp_path / "ckpt"))
    assert c.meta["tied"] == {"lm_head.weight": "tok_emb.weight"}  # FSDP gathers two copies: stored once
    model = gpt()  # world size 1, no process group
    opt = torch.optim.AdamW(model.parameters())
    set_state_dict(model, opt, model_state_dict=c.model_state, optim_state_dict=c.optimizer_state, options=OPTS)
    for k, v in result["saved"].items():
        assert torch.equal(model.state_dict()[k], v), k
    assert len(opt.state) == len(list(model.parameters()))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_rng_and_device_loading(tmp_path):
    torch.cuda.manual_seed_all(7)
    s = json.loads(json.dumps(rng_state()))
    assert len(s["cuda"]) == torch.cuda.device_count()
    a = torch.rand(5, device="cuda")
    set_rng_state(s)
    assert torch.equal(a, torch.rand(5, device="cuda"))
    model, opt = trained(gpt().cuda())
    path = save(tmp_path, 1, model, opt)
    c = load_checkpoint(path, map_location="cuda")
    assert c.model_state["tok_emb.weight"].is_cuda and c.optimizer_state["state"]["tok_emb.weight"]["exp_avg"].is_cuda
    loaded, _, _ = load_model(path, device="cuda")
    x = torch.randint(0, V, (1, 8), device="cuda")
    assert torch.equal(loaded(x), model.eval()(x))
