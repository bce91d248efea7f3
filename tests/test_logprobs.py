"""fastlm.posttrain.logprobs vs log_softmax + gather on the model's logits: values, masks, kernels, gradients."""
import pytest

torch = pytest.importorskip("torch")

from fastlm.models import GPT, GPTConfig  # noqa: E402
from fastlm.posttrain.logprobs import response_labels, sequence_logprobs, token_logprobs  # noqa: E402

torch.set_num_threads(1)
V = 97


def _model(seed=0, **kw):
    torch.manual_seed(seed)
    return GPT(GPTConfig.named("tiny", vocab_size=V, n_layer=2, d_model=64, **kw))


def _batch(B=3, T=11, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (B, T), generator=g)
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[torch.rand(B, T, generator=g) < 0.3] = -100
    labels[0, :] = -100  # one row with nothing to score
    return ids, labels


def _reference(model, ids, labels):
    """log_softmax over the full logits, gathered at the labels; 0 where -100."""
    logp = torch.log_softmax(model(ids, kernels="torch").float(), dim=-1)
    lp = logp.gather(-1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return torch.where(labels == -100, torch.zeros_like(lp), lp)


@pytest.mark.parametrize("kernels", ["fastlm", "torch"])
@pytest.mark.parametrize("shape", [(1, 1), (3, 11), (2, 37)])
def test_token_logprobs_match_log_softmax_gather(kernels, shape):
    model = _model()
    ids, labels = _batch(*shape)
    got = token_logprobs(model, ids, labels, kernels=kernels)
    ref = _reference(model, ids, labels)
    assert got.dtype == torch.float32 and got.shape == ids.shape
    err = (got - ref).abs().max()
    assert err <= 1e-5, f"max abs err {float(err):.2e}"
    assert (got[labels == -100] == 0).all()
    assert (got[labels != -100] < 0).all()


def test_sequence_logprobs_sum_rows():
    model = _model()
    ids, labels = _batch()
    seq = sequence_logprobs(model, ids, labels)
    assert seq.shape == (ids.shape[0],)
    assert torch.allclose(seq, _reference(model, ids, labels).sum(-1), atol=1e-5)
    assert float(seq[0].detach()) == 0.0  # row 0 has only -100 labels


def test_kernels_agree_and_gradients_match_reference():
    ids, labels = _batch(B=2, T=13)
    weights = torch.randn(ids.shape, generator=torch.Generator().manual_seed(5))
    grads = {}
    for name in ("fastlm", "torch", "reference"):
        model = _model()
        lp = _reference(model, ids, labels) if name == "reference" else token_logprobs(model, ids, labels,
                                                                                          kernels=name)
        (lp * weights).sum().backward()
        grads[name] = {n: p.grad.clone() for n, p in model.named_parameters()}
    for name in ("fastlm", "torch"):
        for n, g in grads["reference"].items():
            err = (grads[name][n] - g).abs().max()
            assert err <= 1e-5 + 1e-4 * g.abs().max(), f"{name} d{n}: max abs err {float(err):.2e}"


def test_position_ids_are_passed_through():
    model = _model()
    ids = torch.arange(1, 7).unsqueeze(0)
    labels = torch.arange(2, 8).unsqueeze(0)
    # positions reach the rotary embedding: the first half is as alone, the second half changes
    pos = torch.tensor([[0, 1, 2, 0, 1, 2]])
    whole = token_logprobs(model, ids, labels, position_ids=pos)
    first = token_logprobs(model, ids[:, :3], labels[:, :3])
    assert torch.allclose(whole[:, :3], first, atol=1e-6)
    assert not torch.allclose(whole, token_logprobs(model, ids, labels))


@pytest.mark.parametrize("kernels", ["fastlm", "torch"])
@pytest.mark.parametrize("temperature", [0.5, 0.7, 1.3])
def test_temperature_scores_the_tempered_distribution(kernels, temperature):
    """What a sampler at temperature t draws from: log_softmax(logits / t), values and gradients."""
    ids, labels = _batch(B=2, T=9, seed=3)
    weights = torch.randn(ids.shape, generator=torch.Generator().manual_seed(4))
    out = {}
    for name in ("got", "ref"):
        model = _model()
        if name == "got":
            lp = token_logprobs(model, ids, labels, kernels=kernels, temperature=temperature)
        else:
            logp = torch.log_softmax(model(ids, kernels="torch").float() / temperature, dim=-1)
            lp = logp.gather(-1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1)
            lp = torch.where(labels == -100, torch.zeros_like(lp), lp)
        (lp * weights).sum().backward()
        out[name] = (lp.detach(), {n: p.grad.clone() for n, p in model.named_parameters()})
    assert (out["got"][0] - out["ref"][0]).abs().max() <= 1e-5
    assert not torch.allclose(out["got"][0], _reference(_model(), ids, labels), atol=1e-3)  # t changed it
    for n, g in out["ref"][1].items():
        assert (out["got"][1][n] - g).abs().max() <= 1e-5 + 1e-4 * g.abs().max(), n
    with pytest.raises(ValueError, match="temperature"):
        token_logprobs(_model(), ids, labels, temperature=0.0)


def test_bad_shapes_are_refused():
    model = _model()
    ids, labels = _batch()
    with pytest.raises(ValueError, match="must match"):
        token_logprobs(model, ids, labels[:, :-1])
    with pytest.raises(ValueError, match="batch, time"):
        token_logprobs(model, ids[0], labels[0])
    with pytest.raises(ValueError, match="int64"):
        token_logprobs(model, ids, labels.int())


def test_response_labels_mask_prompt_and_padding():
    ids = torch.tensor([[5, 6, 7, 8, 9, 0, 0], [1, 2, 3, 4, 5, 6, 7]])
    labels = response_labels(ids, torch.tensor([3, 1]), torch.tensor([5, 7]))
    assert labels.tolist() == [[-100, -100, 8, 9, -100, -100, -100], [2, 3, 4, 5, 6, 7, -100]]
    with pytest.raises(ValueError, match="response_start"):
        response_labels(ids, torch.tensor([0, 1]), torch.tensor([5, 7]))
