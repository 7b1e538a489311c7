"""Hard attention: the estimator is unbiased, the baseline cuts its variance, training works."""

from dataclasses import replace

import pytest
import torch

from sat_helpers import train as tr
from sat_helpers.checkpoint import profile_from_dict
from sat_helpers.config import get_profile
from sat_helpers.decoder import DecoderOutput
from sat_helpers.encoder import FeatureDataset, ensure_features
from sat_helpers.hard import HardAttentionLoss, attention_entropy
from sat_helpers.losses import authors_entropy_weight
from sat_helpers.search import beam_search, greedy_search

# quick Shapes at 64 px (a 4 x 4 grid): an epoch in well under a second
TINY = dict(image_size=64, grid=4, epochs=3, train_minutes=60.0, batch_size=12)

# ------------------------------------------------------------------ a toy with known optimum
# One image with P = 4 locations, a one-word caption y; the "decoder" is log p(y | s, a) =
# log_softmax(W a_s)[y] with fixed W, the attention is α = softmax(θ). The expected
# objective E_{s~α}[log p(y|s,a)] + λ_e H[α] has its gradient in closed form, and its
# optimum (λ_e → 0) puts all attention on the location where log p(y | s, a) is largest.
P, V, Y = 4, 20, 3


def toy_problem():
    g = torch.Generator().manual_seed(0)
    features = torch.randn(P, 8, generator=g)
    W = torch.randn(V, 8, generator=g) * 0.5
    theta = torch.randn(P, generator=g) * 0.5
    return features, W, theta


def toy_output(theta_rows: torch.Tensor, features, W, g) -> DecoderOutput:
    """N sampled "captions": one row of θ per sample, so each row's gradient is its own."""
    log_alpha = theta_rows.log_softmax(-1)  # (N, P)
    s = torch.multinomial(log_alpha.exp().detach(), 1, generator=g)  # (N, 1)
    scores = (features[s.squeeze(1)] @ W.T).unsqueeze(1)  # (N, 1, V)
    return DecoderOutput(scores, log_alpha.exp().unsqueeze(1), log_alpha.gather(1, s),
                         attention_entropy(log_alpha.exp()).unsqueeze(1))


def toy_batch(n):
    return torch.tensor([[1, Y]] * n), torch.full((n,), 2)


def exact_objective(theta, features, W, entropy_weight):
    alpha = theta.softmax(-1)
    log_lik = (features @ W.T).log_softmax(-1)[:, Y]  # log p(y | s, a) for every s
    return (alpha * log_lik).sum() + entropy_weight * attention_entropy(alpha)


def per_sample_gradients(loss_fn, theta, features, W, n, g):
    """Gradients of the loss w.r.t. θ, one row per sample (N, P), and w.r.t. W (averaged)."""
    rows = theta.detach().repeat(n, 1).requires_grad_()
    W = W.detach().clone().requires_grad_()
    captions, lengths = toy_batch(n)
    loss, _ = loss_fn(toy_output(rows, features, W, g), captions, lengths)
    loss.backward()
    return -n * rows.grad, -W.grad  # the loss is −(mean objective): ascent directions


def test_hard_loss_uses_hard_lam_not_the_soft_penalty_weight():
    """Sec. 4.1's objective has no doubly stochastic penalty: only ``hard_lam`` adds one."""
    features, W, theta = toy_problem()
    output = toy_output(theta.repeat(4, 1), features, W, torch.Generator().manual_seed(0))
    captions, lengths = toy_batch(4)

    def penalty(**fields):
        loss_fn = HardAttentionLoss(get_profile("quick", **fields))
        return loss_fn(output, captions, lengths)[1]["penalty"]

    assert penalty(lam=1.0, hard_lam=0.0) == 0.0
    assert penalty(lam=0.0, hard_lam=1.0) > 0.0


def test_estimator_is_unbiased_for_the_exact_gradient():
    features, W, theta = toy_problem()
    loss_fn = HardAttentionLoss(get_profile("quick", hard_lam=0.0, entropy_weight=0.1))
    loss_fn.load_state_dict({"baseline": -3.0, "batches": 0})  # any fixed b keeps it unbiased
    n = 40_000
    g = torch.Generator().manual_seed(1)
    per_sample, grad_W = per_sample_gradients(loss_fn, theta, features, W, n, g)
    theta_ = theta.clone().requires_grad_()
    W_ = W.clone().requires_grad_()
    exact_objective(theta_, features, W_, 0.1).backward()
    mean, stderr = per_sample.mean(0), per_sample.std(0) / n ** 0.5
    assert (mean - theta_.grad).abs().max() < 4 * stderr.max() + 1e-4, (mean, theta_.grad)
    assert torch.allclose(grad_W, W_.grad, atol=0.02, rtol=0.05)
    assert theta_.grad.abs().max() > 10 * stderr.max()  # the check has teeth


def test_reinforce_weight_scales_only_the_score_function_term():
    """λ_r (``reinforce_weight``) multiplies the REINFORCE term; the decoder's term stays."""
    features, W, theta = toy_problem()
    grads = {}
    for weight in (0.0, 0.5, 1.0):
        profile = get_profile("quick", hard_lam=0.0, entropy_weight=0.0, reinforce_weight=weight)
        loss_fn = HardAttentionLoss(profile)
        loss_fn.load_state_dict({"baseline": -3.0, "batches": 0})
        rows, W_ = theta.repeat(16, 1).requires_grad_(), W.clone().requires_grad_()
        output = toy_output(rows, features, W_, torch.Generator().manual_seed(0))
        loss_fn(output, *toy_batch(16))[0].backward()
        grads[weight] = rows.grad, W_.grad
    assert grads[0.0][0].abs().max() == 0  # θ (where to look) learns through REINFORCE only
    assert grads[1.0][0].abs().max() > 0
    assert torch.allclose(grads[0.5][0], 0.5 * grads[1.0][0])
    assert all(torch.equal(g[1], grads[1.0][1]) for g in grads.values())


def test_baseline_starts_at_zero_and_moves_on_sampled_minibatches_only():
    """b starts at 0, as in the authors' code (measured against the first batch's mean)."""
    profile = get_profile("quick", hard_lam=0.0)
    loss_fn = HardAttentionLoss(profile)
    features, W, theta = toy_problem()
    g = torch.Generator().manual_seed(6)
    captions, lengths = toy_batch(8)
    first, second = (toy_output(theta.repeat(8, 1), features, W, g) for _ in range(2))
    expected = first._replace(log_probs_of_samples=None)  # an expected-context minibatch
    loss_fn(expected, captions, lengths)
    assert loss_fn.baseline == 0.0  # b only moves on sampled minibatches
    mean = [float(o.scores.log_softmax(-1)[:, 0, Y].mean()) for o in (first, second)]
    assert abs(mean[0]) > 1  # far from 0: the start matters
    assert loss_fn(first, captions, lengths)[1]["baseline"] == 0.0
    b1 = 0.1 * mean[0]  # 0.9 · 0 + 0.1 · the first minibatch's mean
    assert loss_fn.baseline == pytest.approx(b1)
    assert loss_fn(second, captions, lengths)[1]["baseline"] == pytest.approx(b1)
    assert loss_fn.baseline == pytest.approx(0.9 * b1 + 0.1 * mean[1])
    old = HardAttentionLoss(profile)
    old.load_state_dict({"baseline": None, "batches": 3})  # a v0.2.0 checkpoint, no sample yet
    assert old.state_dict() == {"baseline": 0.0, "batches": 3}


def test_baseline_lowers_the_variance():
    features, W, theta = toy_problem()
    g = torch.Generator().manual_seed(2)
    learned = HardAttentionLoss(get_profile("quick", hard_lam=0.0, entropy_weight=0.1))
    for _ in range(40):  # the moving average settles near E[log p(y | s, a)]
        per_sample_gradients(learned, theta, features, W, 64, g)
    zero = HardAttentionLoss(get_profile("quick", hard_lam=0.0, entropy_weight=0.1,
                                         baseline_decay=1.0))
    zero.load_state_dict({"baseline": 0.0, "batches": 0})  # decay 1: b stays 0, no baseline
    var = {}
    for name, loss_fn in (("baseline", learned), ("none", zero)):
        per_sample, _ = per_sample_gradients(loss_fn, theta, features, W, 20_000,
                                             torch.Generator().manual_seed(3))
        var[name] = float(per_sample.var(0).sum())
    expected_log_lik = float(exact_objective(theta, features, W, 0.0))
    assert abs(learned.baseline - expected_log_lik) < 0.1 * abs(expected_log_lik)
    assert var["baseline"] < 0.3 * var["none"], var


def test_estimator_ascends_to_the_known_optimum():
    features, W, theta = toy_problem()
    best = int((features @ W.T).log_softmax(-1)[:, Y].argmax())
    theta = theta.clone().requires_grad_()
    opt = torch.optim.Adam([theta], lr=0.1)
    loss_fn = HardAttentionLoss(get_profile("quick", hard_lam=0.0))
    g = torch.Generator().manual_seed(4)
    captions, lengths = toy_batch(32)
    for _ in range(150):
        loss, _ = loss_fn(toy_output(theta.expand(32, P), features, W, g), captions, lengths)
        opt.zero_grad()
        loss.backward()
        opt.step()
    alpha = theta.detach().softmax(-1)
    assert int(alpha.argmax()) == best and alpha[best] > 0.9, (alpha, best)


def test_reported_loss_and_the_mixture():
    profile = get_profile("quick", hard_lam=0.0, entropy_weight=0.1)
    features, W, theta = toy_problem()
    loss_fn = HardAttentionLoss(profile)
    captions, lengths = toy_batch(8)
    out = toy_output(theta.expand(8, P), features, W, torch.Generator().manual_seed(5))
    loss, parts = loss_fn(out, captions, lengths)
    ce = torch.nn.functional.cross_entropy(out.scores[:, 0], captions[:, 1])
    entropy = attention_entropy(theta.softmax(-1))
    assert torch.allclose(loss, ce - 0.1 * entropy)  # the REINFORCE term adds no value
    assert parts["baseline"] == 0.0 and loss_fn.baseline == pytest.approx(-0.1 * float(ce))
    expected_out = out._replace(log_probs_of_samples=None)  # an expected-context minibatch
    before = loss_fn.state_dict()
    loss_fn(expected_out, captions, lengths)
    assert loss_fn.state_dict() == before  # b moves on sampled minibatches only
    model = torch.nn.Module()
    model.attention = torch.nn.Module()
    draws = [loss_fn.before_batch(model) for _ in range(400)]
    assert model.attention.expected == draws[-1] and 0.4 < sum(draws) / 400 < 0.6
    again = HardAttentionLoss(profile)
    again.load_state_dict({"baseline": 0.0, "batches": 1})
    assert [again.before_batch(model) for _ in range(399)] == draws[1:]  # resumable draws
    none = HardAttentionLoss(replace(profile, expected_context_p=0.0))
    assert not any(none.before_batch(model) for _ in range(50))


def test_old_mixture_name_is_refused_with_its_new_name():
    """semi_sampling_p means the opposite in the authors' code: the old name says what it became."""
    for make in (lambda: get_profile("quick", semi_sampling_p=0.5),
                 lambda: replace(get_profile("quick"), semi_sampling_p=0.5)):
        with pytest.raises(ValueError, match="'semi_sampling_p' is now 'expected_context_p'"):
            make()
    stored = {**get_profile("quick").to_dict(), "semi_sampling_p": 0.25}  # an older checkpoint
    del stored["expected_context_p"]
    assert profile_from_dict(stored).expected_context_p == 0.25


# ------------------------------------------------------------------ training on quick data

@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A data root with the tiny profile's dataset and features, shared by the tests."""
    path = tmp_path_factory.mktemp("sat_data")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SAT_DATA", str(path))
        ensure_features(get_profile("quick", **TINY), device="cpu")
        yield path


@pytest.fixture
def tiny(root, monkeypatch):
    monkeypatch.setenv("SAT_DATA", str(root))
    return get_profile("quick", **TINY)


def test_hard_training_lowers_the_loss(tiny, tmp_path, device):
    # one batch, over and over (lr 3e-3 so that 30 steps show the fit)
    trainer = tr.Trainer(replace(tiny, dropout=0.0, lr=3e-3), attention="hard", out_dir=tmp_path,
                         device=str(device))
    model, loss_fn = trainer.model, trainer.loss_fn
    features, captions, lengths = next(iter(trainer.loader))
    features, captions = features.to(device), captions.to(device)

    def eval_loss():
        model.eval()
        with torch.no_grad():
            return float(loss_fn(model(features, captions, lengths), captions, lengths)[0])

    start, modes = eval_loss(), []
    for _ in range(30):
        model.train()
        modes.append(loss_fn.before_batch(model))
        loss, _ = loss_fn(model(features, captions, lengths), captions, lengths)
        trainer.optimizer.zero_grad()
        loss.backward()
        trainer.optimizer.step()
    assert eval_loss() < 0.8 * start and 0 < sum(modes) < 30  # both kinds of minibatch ran
    # a sampled minibatch teaches the attention MLP through the REINFORCE term alone
    no_other = HardAttentionLoss(replace(trainer.profile, hard_lam=0.0, entropy_weight=0.0))
    model.train()
    model.attention.expected = False
    loss, parts = no_other(model(features, captions, lengths), captions, lengths)
    trainer.optimizer.zero_grad()
    loss.backward()
    assert "baseline" in parts and model.attention.w.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("reward", ["caption_sum", "authors"])
def test_hard_checkpoints_resume_and_decode(tiny, tmp_path, reward):
    # CPU only: there resume is bit for bit (on CUDA only with deterministic kernels)
    tiny = replace(tiny, reinforce_reward=reward)
    tr.train(tiny, "hard", out_dir=tmp_path / "whole", device="cpu")

    def kill_after_first_epoch(log):
        if len(log) == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tr.train(tiny, "hard", out_dir=tmp_path / "killed", callback=kill_after_first_epoch,
                 device="cpu")
    tr.train(tiny, "hard", out_dir=tmp_path / "killed", device="cpu")
    whole, resumed = (torch.load(tmp_path / d / "last.pt", weights_only=True)
                      for d in ("whole", "killed"))
    assert whole["loss_state"]["baseline"] < 0  # it moved towards the log-likelihood
    assert whole["loss_state"] == resumed["loss_state"] and whole["epoch"] == 3
    for k, v in whole["model"].items():
        assert torch.equal(v, resumed["model"][k]), k
    decoder, vocab, ckpt = tr.load_checkpoint(tmp_path / "killed" / "best.pt")
    assert decoder.config["attention"] == "hard" and not decoder.training
    data = FeatureDataset(ensure_features(tiny), tr.ensure_dataset(tiny), "test")
    feats = torch.stack([data[j][0] for j in range(4)])
    first, second = (greedy_search(decoder, feats, 8, vocab=vocab) for _ in range(2))
    assert [c.words for c in first] == [c.words for c in second]  # eval: expected context
    for c in first:
        assert torch.allclose(c.alphas.sum(-1), torch.ones(len(c.alphas)))
    beams = beam_search(decoder, feats, 3, 8, vocab=vocab)
    assert len(beams) == 4 and all(b.alphas.shape[-1] == 16 for b in beams)


# ------------------------------------------------------------------ the authors' reward
# Three captions of 4, 2 and 3 real words (<end> counted), over P = 5 locations: the
# authors' per-word mean reward differs from the summed one only where lengths differ.
LENGTHS = torch.tensor([6, 4, 5])  # <start> and <end> counted: 4, 2, 3 real target steps


def ragged_output(theta, gen, expected=False):
    """(decoder output with fixed scores, sampled locations (B, T)) for θ (B, T, P)."""
    log_alpha = theta.log_softmax(-1)
    s = torch.multinomial(log_alpha.detach().exp().view(-1, 5), 1, generator=gen).view(3, 4)
    scores = torch.randn(3, 4, 7, generator=gen)
    log_prob = None if expected else log_alpha.gather(-1, s[..., None]).squeeze(-1)
    return DecoderOutput(scores, log_alpha.exp(), log_prob,
                         attention_entropy(log_alpha.exp())), s


def ragged_captions(gen):
    captions = torch.randint(4, 7, (3, 6), generator=gen)
    captions[:, 0] = 1
    return captions


def test_authors_reward_gradient_is_theirs_times_b_over_n():
    """λ_r = 1 with "authors" is capgen.py's rule (REINFORCE's sign) in per-word units."""
    gen = torch.Generator().manual_seed(0)
    theta = torch.randn(3, 4, 5, generator=gen).requires_grad_()
    captions = ragged_captions(gen)
    c = 0.002  # the authors' alpha_entropy_c
    profile = get_profile("quick", hard_lam=0.0, reinforce_reward="authors", reinforce_weight=1.0,
                          entropy_weight=authors_entropy_weight(c, 3))
    loss_fn = HardAttentionLoss(profile)
    loss_fn.load_state_dict({"baseline": -2.0, "batches": 0})  # b in log-likelihood units
    out, s = ragged_output(theta, gen)
    loss_fn(out, captions, LENGTHS)[0].backward()

    # by hand, in the authors' units: cost c_nt, r_n = Σ_t c_nt / T_n, their b = −(ours)
    alpha = theta.detach().softmax(-1)
    real = torch.arange(4) < (LENGTHS - 1)[:, None]
    cost = torch.nn.functional.cross_entropy(out.scores.transpose(1, 2), captions[:, 1:5],
                                             reduction="none") * real
    r = cost.sum(1) / real.sum(1)
    sampled = torch.nn.functional.one_hot(s, 5)  # their alphas_sample
    g = ((r - 2.0) / 10)[:, None, None] * sampled / alpha  # ∂/∂α of their REINFORCE term
    g = g + c * (alpha.log() + 1)  # ∂/∂α of c · Σ α log α, every real step
    g = g * real[..., None]
    by_hand = alpha * (g - (alpha * g).sum(-1, keepdim=True))  # through the softmax
    n_words, batch = real.sum(), 3
    assert torch.allclose(theta.grad, by_hand * batch / n_words, atol=1e-6)
    assert theta.grad.abs().max() > 1e-3  # the check has teeth


@pytest.mark.parametrize("reward", ["caption_sum", "authors"])
@pytest.mark.parametrize("advantage", [1.0, -1.0])
def test_reinforce_raises_a_rewarded_location(reward, advantage):
    """One descent step makes a sampled location likelier when its caption beat b, else less."""
    features, W, theta = toy_problem()
    loss_fn = HardAttentionLoss(get_profile("quick", hard_lam=0.0, entropy_weight=0.0,
                                            reinforce_reward=reward))
    theta = theta.clone().requires_grad_()
    out = toy_output(theta[None], features, W, torch.Generator().manual_seed(0))
    reward_value = float(out.scores.log_softmax(-1)[0, 0, Y])  # one word: sum = mean
    loss_fn.load_state_dict({"baseline": reward_value - advantage, "batches": 0})
    loss_fn(out, *toy_batch(1))[0].backward()
    s = int(out.log_probs_of_samples.exp().squeeze().sub(theta.softmax(-1)).abs().argmin())
    after = (theta - 0.1 * theta.grad).softmax(-1)[s]
    before = theta.softmax(-1)[s]
    assert (after > before) == (advantage > 0), (reward, advantage, before, after)


def test_authors_baseline_moves_on_every_minibatch_on_the_per_word_mean():
    """b ← 0.9 b + 0.1 · mean over captions of the per-word mean (their masked_cost.mean())."""
    gen = torch.Generator().manual_seed(1)
    theta, captions = torch.randn(3, 4, 5, generator=gen), ragged_captions(gen)
    loss_fn = HardAttentionLoss(get_profile("quick", reinforce_reward="authors"))
    real = torch.arange(4) < (LENGTHS - 1)[:, None]
    b = 0.0
    for expected in (True, False, True):
        out, _ = ragged_output(theta, gen, expected=expected)
        log_p = -torch.nn.functional.cross_entropy(out.scores.transpose(1, 2), captions[:, 1:5],
                                                   reduction="none") * real
        b = 0.9 * b + 0.1 * float((log_p.sum(1) / real.sum(1)).mean())
        loss_fn(out, captions, LENGTHS)
        assert loss_fn.baseline == pytest.approx(b)  # expected-context minibatches too
    summed = HardAttentionLoss(get_profile("quick"))
    summed(ragged_output(theta, gen, expected=True)[0], captions, LENGTHS)
    assert summed.baseline == 0.0  # "caption_sum": sampled minibatches only


def test_authors_loss_state_round_trips():
    gen = torch.Generator().manual_seed(2)
    theta, captions = torch.randn(3, 4, 5, generator=gen), ragged_captions(gen)
    profile = get_profile("quick", reinforce_reward="authors")
    first = HardAttentionLoss(profile)
    for _ in range(3):
        first.before_batch(_attention_holder())
        first(ragged_output(theta, gen)[0], captions, LENGTHS)
    state = first.state_dict()
    assert isinstance(state["baseline"], float) and state["batches"] == 3
    second = HardAttentionLoss(profile)
    second.load_state_dict(torch.load(_saved(state), weights_only=True))
    assert second.state_dict() == state
    out, _ = ragged_output(theta, gen)
    holder = _attention_holder()
    assert first.before_batch(holder) == second.before_batch(holder)
    assert torch.equal(first(out, captions, LENGTHS)[0], second(out, captions, LENGTHS)[0])
    assert first.state_dict() == second.state_dict()


def test_unknown_reward_is_refused():
    with pytest.raises(ValueError, match="reinforce_reward='mean'.*caption_sum"):
        HardAttentionLoss(get_profile("quick", reinforce_reward="mean"))


def _attention_holder():
    model = torch.nn.Module()
    model.attention = torch.nn.Module()
    return model


def _saved(state):
    import io

    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return buffer
