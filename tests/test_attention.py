"""Soft and hard attention do what the paper's equations say, and the regulariser too."""

import pytest
import torch
from torch import nn
from torch.func import functional_call

from sat_helpers.attention import (
    HardAttention,
    MLPScores,
    SoftAttention,
    doubly_stochastic_penalty,
    paper_lam_to_package,
)

B, P, E, D, A = 3, 7, 5, 4, 6


def assert_close(actual, expected):
    """Equal up to float64 rounding (torch.testing.assert_close costs seconds to import)."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert torch.allclose(actual, expected, rtol=1e-7, atol=1e-7), (actual - expected).abs().max()


def make(cls=SoftAttention, seed=0, positions=P, enc=E, device="cpu"):
    """A float64 attention module with random features (B, P, E) and hidden states (B, D)."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    att = cls(enc, D, A).double().to(device)
    features = torch.randn(B, positions, enc, generator=gen, dtype=torch.float64).to(device)
    hidden = torch.randn(B, D, generator=gen, dtype=torch.float64).to(device)
    return att, features, hidden


def reference(att, features, hidden):
    """Eq. 4, 5 and 13 written position by position, for comparison."""
    scores = torch.empty(features.shape[:2], dtype=features.dtype, device=features.device)
    for b in range(features.shape[0]):
        for i in range(features.shape[1]):
            inner = att.W_a.weight @ features[b, i] + att.W_a.bias + att.W_h.weight @ hidden[b]
            scores[b, i] = att.w.weight[0] @ torch.tanh(inner)
    alpha = scores.exp() / scores.exp().sum(1, keepdim=True)
    context = (alpha.unsqueeze(-1) * features).sum(1)
    return context, alpha


def test_alpha_is_a_distribution_and_matches_the_equations(device):
    att, features, hidden = make(device=device)
    context, alpha = att(features, hidden)
    assert alpha.shape == (B, P) and context.shape == (B, E)
    assert (alpha >= 0).all()
    assert_close(alpha.sum(1), torch.ones(B, dtype=torch.float64, device=device))
    ref_context, ref_alpha = reference(att, features, hidden)
    assert_close(alpha, ref_alpha)
    assert_close(context, ref_context)


def test_context_is_the_alpha_weighted_sum(device):
    att, features, hidden = make(device=device)
    context, alpha = att(features, hidden)
    for b in range(B):
        weighted = sum(alpha[b, i] * features[b, i] for i in range(P))
        assert_close(context[b], weighted)


def test_projected_path_equals_plain_path_and_is_used(device):
    att, features, hidden = make(device=device)
    plain = att(features, hidden)
    hoisted = att(features, hidden, projected=att.project(features))
    for a, b in zip(plain, hoisted, strict=True):
        assert_close(a, b)
    other = att(features, hidden, projected=att.project(features.flip(1)))
    assert not torch.allclose(other[1], plain[1]), "the projected argument was ignored"


def test_permuting_positions_permutes_alpha():
    att, features, hidden = make()
    context, alpha = att(features, hidden)
    perm = torch.randperm(P, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(perm, torch.arange(P))
    context_p, alpha_p = att(features[:, perm], hidden)
    assert_close(alpha_p, alpha[:, perm])
    assert_close(context_p, context)  # a weighted sum does not care about order


@pytest.mark.parametrize("masked", [False, True])
def test_gradcheck_through_parameters_and_inputs(masked):
    att, features, hidden = make(positions=4, enc=3)
    mask = torch.tensor([[True, False, True, True]]).expand(B, -1) if masked else None
    names = [name for name, _ in att.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in att.parameters()]

    def run(features, hidden, *params):
        context, alpha = functional_call(att, dict(zip(names, params, strict=True)),
                                         (features, hidden), {"mask": mask})
        return context, alpha

    inputs = (features.requires_grad_(), hidden.requires_grad_(), *params)
    assert torch.autograd.gradcheck(run, inputs)


def plain_scores(att, projected, query):
    """Eq. 4 as autograd sees it: w(tanh(W_a a + b + W_h h)), query (B, k, A) -> (B, k, P)."""
    return att.w(torch.tanh(projected.unsqueeze(1) + query.unsqueeze(2))).squeeze(-1)


@pytest.mark.parametrize("k", [None, 3])
def test_written_out_scores_equal_autograds_in_value_and_gradient(k):
    # float32 on the CPU: scores() takes MLPScores, the hand-written backward
    att = SoftAttention(E, D, A)
    projected = torch.randn(B, P, A, requires_grad=True)
    query = torch.randn(B, *([k] if k else []), A, requires_grad=True)
    assert att.written_out(projected, query)
    scores = att.scores(projected, query)
    upstream = torch.randn_like(scores)
    fast = torch.autograd.grad((scores * upstream).sum(), (projected, query, att.w.weight))
    ref = plain_scores(att, projected, query if k else query.unsqueeze(1))
    ref = ref if k else ref.squeeze(1)
    slow = torch.autograd.grad((ref * upstream).sum(), (projected, query, att.w.weight))
    assert torch.allclose(scores, ref, atol=1e-6)
    for a, b in zip(fast, slow, strict=True):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5), (a - b).abs().max()


def test_scores_in_many_blocks_equal_the_plain_scores():
    """5·196·512 floats per image: one image per block, six blocks, with and without autograd."""
    torch.manual_seed(0)
    att = SoftAttention(16, 8, 512)
    projected = att.project(torch.randn(6, 196, 16)).detach().requires_grad_()
    query = att.W_h(torch.randn(6, 5, 8)).detach().requires_grad_()
    ref = plain_scores(att, projected, query)
    upstream = torch.randn_like(ref)
    slow = torch.autograd.grad((ref * upstream).sum(), (projected, query, att.w.weight))
    scores = att.scores(projected, query)
    fast = torch.autograd.grad((scores * upstream).sum(), (projected, query, att.w.weight))
    with torch.no_grad():
        no_graph = att.scores(projected, query)
    for got in (scores.detach(), no_graph):
        torch.testing.assert_close(got, ref.detach(), rtol=0, atol=1e-5)
    for a, b in zip(fast, slow, strict=True):  # w's: float32 sums of 5 880 terms, up to ~100
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6 * float(b.abs().max()))


@pytest.mark.parametrize("k", [1, 3])
def test_written_out_scores_gradcheck(k):
    gen = torch.Generator().manual_seed(k)
    inputs = [torch.randn(*shape, generator=gen, dtype=torch.float64, requires_grad=True)
              for shape in [(B, P, A), (B, k, A), (A,)]]
    assert torch.autograd.gradcheck(MLPScores.apply, inputs)


def test_a_changed_w_gets_its_own_scores():
    # a learner's w (a bias, a hook) is not what MLPScores computes: the plain expression runs
    att = SoftAttention(E, D, A)
    projected, query = torch.randn(B, P, A), torch.randn(B, 2, A)
    att.w = nn.Linear(A, 1)
    assert not att.written_out(projected, query)
    assert torch.allclose(att.scores(projected, query), plain_scores(att, projected, query))
    hooked = SoftAttention(E, D, A)
    hooked.w.register_forward_hook(lambda module, args, out: out * 2)
    assert not hooked.written_out(projected, query)
    assert torch.allclose(hooked.scores(projected, query), plain_scores(hooked, projected, query))
    assert not SoftAttention(E, D, A).double().written_out(projected.double(), query.double())


def test_hard_attention_entropy_and_log_prob_gradcheck():
    att, features, hidden = make(HardAttention, positions=4, enc=3)
    names = [name for name, _ in att.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in att.parameters()]

    def run(features, hidden, *params):
        torch.manual_seed(5)  # the same sample at every evaluation
        context, alpha, log_prob, entropy = functional_call(
            att, dict(zip(names, params, strict=True)), (features, hidden))
        return context, alpha, log_prob, entropy

    inputs = (features.requires_grad_(), hidden.requires_grad_(), *params)
    assert torch.autograd.gradcheck(run, inputs)


@pytest.mark.parametrize("cls", [SoftAttention, HardAttention])
def test_masked_positions_get_zero_weight_and_zero_gradient(cls):
    att, features, hidden = make(cls)
    mask = torch.ones(B, P, dtype=torch.bool)
    mask[0, [1, 4]] = False
    mask[2, 0] = False
    features.requires_grad_()
    projected = att.project(features).detach().requires_grad_()
    out = att(features, hidden, projected=projected, mask=mask)
    context, alpha = out[0], out[1]
    assert (alpha[~mask] == 0).all() and (alpha[mask] > 0).all()
    assert_close(alpha.sum(1), torch.ones(B, dtype=torch.float64))
    loss = context.square().sum() + alpha.square().sum()
    if cls is HardAttention:
        loss = loss + out[2].sum() + out[3].sum()  # log-probability and entropy too
    loss.backward()
    assert torch.isfinite(features.grad).all() and torch.isfinite(projected.grad).all()
    assert (features.grad[~mask] == 0).all() and (projected.grad[~mask] == 0).all()
    if cls is SoftAttention:  # hard attention: only the sampled vector gets a gradient
        assert (features.grad[mask] != 0).any(dim=-1).all()
    # masking a position is the same as deleting it
    keep = mask[0]
    sub_context, sub_alpha = SoftAttention.forward(att, features[:1, keep], hidden[:1])[:2]
    assert_close(alpha[0, keep], sub_alpha[0])
    if cls is SoftAttention:
        assert_close(context[0], sub_context[0])


def test_a_mask_without_any_position_is_refused():
    att, features, hidden = make()
    mask = torch.ones(B, P, dtype=torch.bool)
    mask[1] = False
    with pytest.raises(ValueError, match="no position"):
        att(features, hidden, mask=mask)


def test_shape_errors_name_the_tensor():
    att, features, hidden = make()
    with pytest.raises(ValueError, match="projected"):
        att(features, hidden, projected=att.project(features[:, :3]))
    with pytest.raises(ValueError, match="batch"):
        att(features, hidden[:2])


@pytest.mark.parametrize("cls", [SoftAttention, HardAttention])
def test_beam_form_equals_k_separate_calls(cls):
    att, features, _ = make(cls)
    att.eval()  # hard attention: the deterministic expectation, comparable call by call
    k = 4
    hidden = torch.randn(B, k, D, dtype=torch.float64)
    mask = torch.ones(B, P, dtype=torch.bool)
    mask[1, 2] = False
    out = att(features, hidden, mask=mask)
    assert out[0].shape == (B, k, E) and out[1].shape == (B, k, P)
    for j in range(k):
        single = att(features, hidden[:, j], mask=mask)
        for together, alone in zip(out, single, strict=True):
            if alone is not None:
                assert_close(together[:, j], alone)


def test_hard_attention_beam_form_samples_each_row_consistently():
    att, features, _ = make(HardAttention)
    k = 5
    hidden = torch.randn(B, k, D, dtype=torch.float64)
    torch.manual_seed(3)
    context, alpha, log_prob, entropy = att(features, hidden)
    assert context.shape == (B, k, E) and log_prob.shape == (B, k) and entropy.shape == (B, k)
    for b in range(B):
        for j in range(k):
            location = (features[b] - context[b, j]).norm(dim=1).argmin()
            assert_close(context[b, j], features[b, location])
            assert_close(log_prob[b, j], alpha[b, j, location].log())


def one_hot_problem(positions=6, scale=3.0, seed=0):
    """Hard attention over one image whose features are one-hot: the context is the location."""
    torch.manual_seed(seed)
    att = HardAttention(positions, D, A).double()
    with torch.no_grad():
        att.w.weight.mul_(scale)  # make α far from uniform
    features = torch.eye(positions, dtype=torch.float64).unsqueeze(0)  # (1, P, P)
    hidden = torch.randn(1, D, dtype=torch.float64)
    return att, features, hidden


def test_sampled_locations_follow_alpha():
    att, features, hidden = one_hot_problem()
    n = 20_000
    torch.manual_seed(0)
    context, alpha, _, _ = att(features, hidden.unsqueeze(1).expand(1, n, D))  # n draws at once
    counts = context[0].sum(0)  # one-hot contexts: how often each location was drawn
    probs = alpha[0, 0].detach()
    assert_close(alpha[0], probs.expand(n, -1))
    expected = n * probs
    assert expected.min() >= 5, "the chi-square approximation needs ≥ 5 expected per cell"
    assert probs.max() > 2 * probs.min(), "α should be far from uniform for a meaningful test"
    statistic = float(((counts - expected) ** 2 / expected).sum())
    # chi-square critical value, 5 degrees of freedom, significance 0.001: 20.515
    critical = 20.515
    try:
        from scipy.stats import chi2
        critical = float(chi2.ppf(0.999, df=len(probs) - 1))
    except ImportError:
        pass
    assert statistic < critical, f"χ² = {statistic:.1f} ≥ {critical:.1f}: samples do not follow α"
    uniform = ((counts - n / len(probs)) ** 2 / (n / len(probs))).sum()
    assert uniform > critical, "the test could not tell these draws from uniform ones"


def test_masked_locations_are_never_sampled():
    att, features, hidden = one_hot_problem()
    mask = torch.tensor([[True, False, True, True, False, True]])
    torch.manual_seed(0)
    context = att(features, hidden.unsqueeze(1).expand(1, 5000, D), mask=mask)[0]
    assert (context[0][:, ~mask[0]] == 0).all()


def test_log_prob_and_entropy_are_exact():
    att, features, hidden = make(HardAttention)
    torch.manual_seed(2)
    context, alpha, log_prob, entropy = att(features, hidden)
    _, ref_alpha = reference(att, features, hidden)
    assert_close(alpha, ref_alpha)
    for b in range(B):
        location = (features[b] - context[b]).norm(dim=1).argmin()
        assert_close(context[b], features[b, location])
        assert_close(log_prob[b], ref_alpha[b, location].log())
        assert_close(entropy[b], -(ref_alpha[b] * ref_alpha[b].log()).sum())


def test_eval_mode_and_expected_flag_return_the_expected_context():
    hard, features, hidden = make(HardAttention)
    soft = SoftAttention(E, D, A).double()
    soft.load_state_dict(hard.state_dict())
    soft_context, soft_alpha = soft(features, hidden)
    torch.manual_seed(0)
    sampled = hard(features, hidden)
    assert sampled[2] is not None
    assert not torch.allclose(sampled[0], soft_context), "training mode should sample"
    hard.eval()
    context, alpha, log_prob, entropy = hard(features, hidden)
    assert log_prob is None
    assert_close(context, soft_context)
    assert_close(alpha, soft_alpha)
    hard.train()
    hard.expected = True
    context, _, log_prob, _ = hard(features, hidden)
    assert log_prob is None
    assert_close(context, soft_context)


def test_reinforce_estimate_matches_the_exact_gradient():
    """E_s[r_s ∇ log α_s] = ∇ Σ_i α_i r_i: the score-function estimator is unbiased."""
    att, features, hidden = one_hot_problem(positions=4, scale=2.0)
    reward = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)
    params = list(att.parameters())

    def flat_grad(value):
        return torch.cat([g.flatten() for g in torch.autograd.grad(value, params)])

    att.eval()
    alpha = att(features, hidden)[1][0]
    exact = flat_grad((alpha * reward).sum())
    # the estimator's exact per-coordinate variance, from the gradient of each log α_i
    per_location = torch.stack([
        reward[i] * flat_grad(att(features, hidden)[1][0, i].log()) for i in range(4)
    ])
    variance = (alpha.detach().unsqueeze(1) * per_location**2).sum(0) - exact**2
    att.train()
    n = 20_000
    torch.manual_seed(0)
    context, _, log_prob, _ = att(features, hidden.unsqueeze(1).expand(1, n, D))
    location = context[0].argmax(1)
    estimate = flat_grad((reward[location] * log_prob[0]).mean())
    error = (estimate - exact).abs()
    assert (error <= 5 * (variance / n).sqrt() + 1e-9).all(), (error, (variance / n).sqrt())
    assert exact.abs().max() > 10 * (variance / n).sqrt().max(), "too noisy to mean anything"


def test_doubly_stochastic_penalty():
    # a permutation matrix per row: every position gets exactly one unit of attention over time
    alphas = torch.stack([torch.eye(P)[torch.randperm(P)] for _ in range(B)])  # (B, T=P, P)
    lengths = torch.full((B,), P)
    assert doubly_stochastic_penalty(alphas, lengths).item() == pytest.approx(0.0, abs=1e-6)
    uniform = torch.full((B, P, P), 1.0 / P)  # also doubly stochastic
    assert doubly_stochastic_penalty(uniform, lengths).item() == pytest.approx(0.0, abs=1e-6)
    # all the attention on position 0 at every step: ((1 - T)^2 + (P - 1)) / P per image
    stuck = torch.zeros(B, P, P)
    stuck[:, :, 0] = 1.0
    expected = ((1 - P) ** 2 + (P - 1)) / P
    penalty = doubly_stochastic_penalty(stuck, lengths, lam=0.5).item()
    assert penalty == pytest.approx(0.5 * expected)
    # padding steps, whatever their α, change nothing
    noise = torch.rand(B, 3, P).softmax(-1)
    padded = torch.cat([alphas, noise], dim=1)
    assert doubly_stochastic_penalty(padded, lengths).item() == pytest.approx(0.0, abs=1e-6)
    assert doubly_stochastic_penalty(padded, lengths + 3).item() > 0.01
    # rows of different lengths: each row counts its own steps only; the batch mean
    short = alphas.clone()
    short[1, 4:] = torch.rand(P - 4, P)
    lengths_short = torch.tensor([P, 4, P])
    row1 = ((1 - alphas[1, :4].sum(0)) ** 2).mean()
    got = doubly_stochastic_penalty(short, lengths_short)
    assert got.item() == pytest.approx(row1.item() / B)


def test_penalty_refuses_wrong_shapes():
    with pytest.raises(ValueError, match="lengths"):
        doubly_stochastic_penalty(torch.rand(2, 3, 4), torch.tensor([3, 3, 3]))



def test_paper_lambda_in_the_package_units():
    """Eq. 14 per caption, batch-averaged, times B/N is the package's penalty at the converted λ."""
    g = torch.Generator().manual_seed(0)
    alphas = torch.randn(3, 5, 6, generator=g).softmax(-1)  # B = 3, T = 5, P = 6
    lengths = torch.tensor([5, 2, 4])
    real = (torch.arange(5) < lengths[:, None]).float()
    totals = (alphas * real[..., None]).sum(1)
    lam_paper, n_words = 0.7, float(lengths.sum())
    eq14 = lam_paper * ((1 - totals) ** 2).sum(1).mean()  # Σ over positions, mean over captions
    lam = paper_lam_to_package(lam_paper, positions=6, words_per_caption=n_words / 3)
    package = doubly_stochastic_penalty(alphas, lengths, lam)
    assert package.item() == pytest.approx(eq14.item() * 3 / n_words)
