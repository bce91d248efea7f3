"""RL math (fastlm.posttrain.rl_losses) against direct loops and the definitions TRL implements."""

import math

import pytest
import torch

from fastlm.posttrain.rl_losses import (AdaptiveKLController, entropy_from_logits, gae, group_advantages,
                                        kl_k1, kl_k3, masked_mean, masked_var, policy_loss, ppo_rewards, value_loss,
                                        whiten)


def _rows_mask(B, T, seed=0):
    """Each row: a few masked-out prompt tokens, a contiguous response, then padding."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(B, T, dtype=torch.bool)
    spans = []
    for b in range(B):
        start = int(torch.randint(0, T // 2, (1,), generator=g))
        length = int(torch.randint(1, T - start + 1, (1,), generator=g))
        mask[b, start:start + length] = True
        spans.append((start, start + length))
    return mask, spans


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.8), (1.0, 1.0), (0.5, 0.0)])
def test_gae_matches_direct_loop(gamma, lam):
    B, T = 5, 11
    g = torch.Generator().manual_seed(1)
    rewards, values = torch.randn(B, T, generator=g), torch.randn(B, T, generator=g)
    mask, spans = _rows_mask(B, T)
    adv, ret = gae(rewards, values, mask, gamma=gamma, lam=lam)
    for b, (s, e) in enumerate(spans):
        r, v = rewards[b, s:e].tolist(), values[b, s:e].tolist()
        n = len(r)
        # the textbook sum: A_t = sum_l (gamma lam)^l delta_{t+l}, V after the last token = 0
        deltas = [r[t] + gamma * (v[t + 1] if t + 1 < n else 0.0) - v[t] for t in range(n)]
        want = [sum((gamma * lam) ** l * deltas[t + l] for l in range(n - t)) for t in range(n)]
        assert adv[b, s:e].tolist() == pytest.approx(want, abs=1e-5)
        assert ret[b, s:e].tolist() == pytest.approx([a + x for a, x in zip(want, v)], abs=1e-5)
        assert not adv[b, :s].any() and not adv[b, e:].any() and not ret[b, e:].any()


def test_gae_lambda_one_is_discounted_return_minus_value():
    r = torch.tensor([[0.0, 0.0, 2.0]])
    v = torch.tensor([[0.3, -0.1, 0.7]])
    adv, ret = gae(r, v, torch.ones(1, 3), gamma=0.5, lam=1.0)
    assert ret[0].tolist() == pytest.approx([0.5, 1.0, 2.0])
    assert adv[0].tolist() == pytest.approx([0.5 - 0.3, 1.0 + 0.1, 2.0 - 0.7])


def test_masked_stats_and_whiten():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4, 9, generator=g)
    mask, _ = _rows_mask(4, 9, seed=3)
    sel = x[mask]
    assert float(masked_mean(x, mask)) == pytest.approx(float(sel.mean()), abs=1e-6)
    assert float(masked_var(x, mask)) == pytest.approx(float(sel.var(unbiased=True)), abs=1e-5)
    w = whiten(x, mask)
    want = (sel - sel.mean()) / torch.sqrt(sel.var(unbiased=True) + 1e-8)
    assert torch.allclose(w[mask], want, atol=1e-5)
    assert not w[~mask].any()
    w2 = whiten(x, mask, shift_mean=False)  # TRL's reward whitening keeps the mean
    assert torch.allclose(w2[mask], want + sel.mean(), atol=1e-5)
    assert masked_mean(x, torch.zeros_like(mask)).item() == 0.0


def test_kl_estimators_match_definitions():
    # exact KL(p || q) of two categoricals = E_p[k1] = E_p[k3]: check by summing over the support
    g = torch.Generator().manual_seed(4)
    p = torch.softmax(torch.randn(7, generator=g), 0)
    q = torch.softmax(torch.randn(7, generator=g), 0)
    kl = float((p * (p.log() - q.log())).sum())
    assert float((p * kl_k1(p.log(), q.log())).sum()) == pytest.approx(kl, rel=1e-5)
    assert float((p * kl_k3(p.log(), q.log())).sum()) == pytest.approx(kl, rel=1e-5)
    lp, lq = torch.randn(50, generator=g), torch.randn(50, generator=g)
    assert torch.allclose(kl_k1(lp, lq), lp - lq)
    direct = torch.tensor([math.exp(b - a) - (b - a) - 1 for a, b in zip(lp.tolist(), lq.tolist())])
    assert torch.allclose(kl_k3(lp, lq), direct, atol=1e-5)
    assert (kl_k3(lp, lq) >= 0).all()


def test_policy_loss_and_clip_fraction_vs_direct_formula():
    B, T, clip = 3, 8, 0.2
    g = torch.Generator().manual_seed(5)
    old = torch.randn(B, T, generator=g) - 2
    logp = (old + 0.4 * torch.randn(B, T, generator=g)).requires_grad_()
    adv = torch.randn(B, T, generator=g)
    mask, _ = _rows_mask(B, T, seed=6)
    loss, stats = policy_loss(logp, old, adv, mask, clip=clip)
    lp = logp.detach()
    terms, clipped_n, n = [], 0, 0
    for b in range(B):
        for t in range(T):
            if not mask[b, t]:
                continue
            ratio = math.exp(float(lp[b, t]) - float(old[b, t]))
            a = float(adv[b, t])
            u, c = -a * ratio, -a * min(max(ratio, 1 - clip), 1 + clip)
            terms.append(max(u, c))
            clipped_n += c > u
            n += 1
    assert loss.item() == pytest.approx(sum(terms) / n, rel=1e-5)
    assert float(stats["clip_frac"]) == pytest.approx(clipped_n / n)
    assert 0 < clipped_n < n  # the case is not degenerate
    loss.backward()  # clipped tokens get no gradient; unclipped ones -A ratio / n
    for b in range(B):
        for t in range(T):
            ratio = math.exp(float(lp[b, t]) - float(old[b, t]))
            a = float(adv[b, t])
            active = mask[b, t] and (-a * ratio >= -a * min(max(ratio, 1 - clip), 1 + clip))
            want = -a * ratio / n if active else 0.0
            assert float(logp.grad[b, t]) == pytest.approx(want, abs=1e-6)


def test_value_loss_vs_direct_formula():
    B, T, clip = 3, 6, 0.2
    g = torch.Generator().manual_seed(7)
    old, ret = torch.randn(B, T, generator=g), torch.randn(B, T, generator=g)
    v = old + 0.5 * torch.randn(B, T, generator=g)
    mask, _ = _rows_mask(B, T, seed=8)
    loss, frac = value_loss(v, old, ret, mask, clip=clip)
    terms, nclip = [], 0
    for b, t in mask.nonzero().tolist():
        vc = float(old[b, t]) + min(max(float(v[b, t] - old[b, t]), -clip), clip)
        l1, l2 = (float(v[b, t]) - float(ret[b, t])) ** 2, (vc - float(ret[b, t])) ** 2
        terms.append(max(l1, l2))
        nclip += l2 > l1
    assert float(loss) == pytest.approx(0.5 * sum(terms) / len(terms), rel=1e-5)
    assert float(frac) == pytest.approx(nclip / len(terms))


def test_group_advantages_vs_direct():
    g = torch.Generator().manual_seed(9)
    r = torch.randn(12, generator=g)
    G = 4
    grpo, rloo = group_advantages(r, G, kind="grpo"), group_advantages(r, G, kind="rloo")
    for i in range(12):
        grp = r[(i // G) * G:(i // G + 1) * G].tolist()
        mean = sum(grp) / G
        std = math.sqrt(sum((x - mean) ** 2 for x in grp) / (G - 1))
        assert float(grpo[i]) == pytest.approx((r[i].item() - mean) / (std + 1e-4), rel=1e-5)
        others = [x for j, x in enumerate(grp) if j != i % G]
        assert float(rloo[i]) == pytest.approx(r[i].item() - sum(others) / (G - 1), abs=1e-6)
    same = group_advantages(torch.ones(4), 2, kind="grpo")  # no spread: zero advantage, no NaN
    assert same.tolist() == [0.0] * 4
    with pytest.raises(ValueError, match="multiple of group_size"):
        group_advantages(torch.ones(5), 2, kind="grpo")
    with pytest.raises(ValueError, match="group_size must be >= 2"):
        group_advantages(torch.ones(4), 1, kind="rloo")


def test_entropy_from_logits():
    g = torch.Generator().manual_seed(10)
    z = torch.randn(5, 13, generator=g)
    p = torch.softmax(z, -1)
    assert torch.allclose(entropy_from_logits(z), -(p * p.log()).sum(-1), atol=1e-5)


def test_adaptive_kl_controller():
    c = AdaptiveKLController(0.2, target=6.0, horizon=10000)
    c.update(12.0, n_steps=256)  # error clipped at +0.2
    assert c.value == pytest.approx(0.2 * (1 + 0.2 * 256 / 10000))
    c2 = AdaptiveKLController(0.2, target=6.0, horizon=10000)
    c2.update(5.4, n_steps=100)  # error -0.1
    assert c2.value == pytest.approx(0.2 * (1 - 0.1 * 100 / 10000))
    fixed = AdaptiveKLController(0.2, target=0.0)
    fixed.update(100.0, n_steps=100)
    assert fixed.value == 0.2


def test_ppo_rewards_kl_per_token_and_score_at_last_action():
    B, T, coef = 4, 9, 0.3
    g = torch.Generator().manual_seed(11)
    logp, ref = -torch.rand(B, T, generator=g) * 3, -torch.rand(B, T, generator=g) * 3
    scores = torch.randn(B, generator=g)
    mask, spans = _rows_mask(B, T, seed=12)
    last = torch.tensor([e - 1 for _, e in spans])
    r = ppo_rewards(scores, logp, ref, mask, last, kl_coef=coef)
    for b, (s, e) in enumerate(spans):
        for t in range(T):
            want = 0.0
            if s <= t < e:
                want = -coef * (float(logp[b, t]) - float(ref[b, t])) + (float(scores[b]) if t == e - 1 else 0.0)
            assert float(r[b, t]) == pytest.approx(want, abs=1e-6)
