"""The decoder: the paper's step, teacher forcing = repeated step, caller's order, live rows."""

import pytest
import torch

from sat_helpers.decoder import AttentionDecoder, Prefixes

V, E, P = 11, 6, 5


def make(device="cpu", **kw) -> AttentionDecoder:
    torch.manual_seed(0)
    dec = AttentionDecoder(V, E, embed_dim=4, dec_dim=7, att_dim=3, **kw).double()
    return dec.to(device).eval()


def batch(lengths=(5, 3, 6, 2), device="cpu"):
    """Features and captions on ``device``; lengths on the CPU, as the collate makes them."""
    torch.manual_seed(1)
    B, T = len(lengths), max(lengths)
    feats = torch.randn(B, P, E, dtype=torch.float64)
    caps = torch.randint(4, V, (B, T))
    caps[:, 0] = 1
    for b, n in enumerate(lengths):
        caps[b, n - 1] = 2
        caps[b, n:] = 0
    return feats.to(device), caps.to(device), torch.tensor(lengths)


@pytest.mark.parametrize("gate", ["scalar", "vector", None])
@pytest.mark.parametrize("deep_output", [True, False])
def test_forward_equals_repeated_step(gate, deep_output, device):
    dec = make(device, gate=gate, deep_output=deep_output)
    feats, caps, lengths = batch(device=device)
    out = dec(feats, caps, lengths)
    state = dec.init_state(feats)
    for t in range(caps.shape[1] - 1):
        log_probs, alpha, state = dec.step(state, caps[:, t])
        live = lengths - 1 > t
        assert torch.allclose(out.scores[live, t].log_softmax(-1), log_probs[live], atol=1e-10)
        assert torch.allclose(out.alphas[live, t], alpha[live], atol=1e-12)
        assert (out.scores[~live, t] == 0).all() and (out.alphas[~live, t] == 0).all()


def test_outputs_in_callers_order(device):
    dec = make(device)
    feats, caps, lengths = batch(device=device)
    out = dec(feats, caps, lengths)
    perm = torch.tensor([2, 0, 3, 1], device=device)
    out_p = dec(feats[perm], caps[perm], lengths[perm.cpu()])
    assert torch.allclose(out.scores[perm], out_p.scores, atol=1e-12)
    single = dec(feats[1:2], caps[1:2, :3], lengths[1:2])
    assert torch.allclose(out.scores[1, :2], single.scores[0], atol=1e-12)
    assert out.scores.shape == (4, 5, V) and out.alphas.shape == (4, 5, P)


def test_beam_state_shares_features(device):
    dec = make(device)
    feats, caps, _ = batch(device=device)
    state = dec.init_state(feats)
    log_probs, alpha, _ = dec.step(state, caps[:, 0])
    beams = state.expand(3)
    lp3, a3, next3 = dec.step(beams, caps[:, :1].expand(-1, 3))
    assert lp3.shape == (4, 3, V) and next3.features.shape == feats.shape
    assert torch.allclose(lp3, log_probs.unsqueeze(1).expand(-1, 3, -1), atol=1e-12)
    reordered = next3.reorder(torch.tensor([[2, 0, 0]] * 4, device=device))
    assert torch.equal(reordered.h[:, 1], next3.h[:, 0])


def test_gradients_reach_every_parameter(device):
    dec = make(device).train()
    feats, caps, lengths = batch(device=device)
    out = dec(feats, caps, lengths)
    out.scores.sum().backward()
    missing = [n for n, p in dec.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert missing == []


def test_hard_attention_returns_the_sampling_terms(device):
    dec = make(device, attention="hard").train()
    feats, caps, lengths = batch(device=device)
    out = dec(feats, caps, lengths)
    live = (torch.arange(5) < (lengths - 1)[:, None]).to(device)
    assert out.log_probs_of_samples.shape == out.entropies.shape == (4, 5)
    assert (out.log_probs_of_samples[live] <= 0).all() and (out.entropies[live] > 0).all()
    assert (out.log_probs_of_samples[~live] == 0).all()
    assert dec.eval()(feats, caps, lengths).log_probs_of_samples is None  # expectation


def test_bad_arguments_say_what_is_wrong():
    with pytest.raises(ValueError, match="attention must be"):
        AttentionDecoder(V, E, 4, 7, 3, attention="local")
    with pytest.raises(ValueError, match="gate must be"):
        AttentionDecoder(V, E, 4, 7, 3, gate="channel")
    feats, caps, _ = batch()
    with pytest.raises(ValueError, match="length >= 2"):
        make()(feats, caps, torch.tensor([5, 1, 6, 2]))


def test_embedding_starts_at_the_authors_scale():
    """E ~ N(0, 0.01²) as capgen.py's norm_weight: E y enters the deep output's tanh near 0."""
    torch.manual_seed(0)
    dec = AttentionDecoder(vocab_size=500, enc_dim=16, embed_dim=64, dec_dim=32, att_dim=16)
    weight = dec.embedding.weight
    assert abs(float(weight.mean())) < 1e-3 and 0.009 < float(weight.std()) < 0.011


def dropout_inputs(dec: AttentionDecoder, run) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(input, output) of each of the decoder's dropout modules during ``run()``."""
    seen = {}
    hooks = [module.register_forward_hook(
        lambda m, args, out, name=name: seen.__setitem__(name, (args[0], out)))
        for name, module in dec.named_modules() if isinstance(module, torch.nn.Dropout)]
    run()
    for hook in hooks:
        hook.remove()
    return seen


@pytest.mark.parametrize("deep_output", [True, False])
def test_dropout_at_the_authors_sites(deep_output):
    """capgen.py drops h_t before L_h and the deep output after its tanh; both drop p, in
    training only, and neither reaches the recurrence (α is the same as in eval mode)."""
    p = 0.3
    torch.manual_seed(0)
    dec = AttentionDecoder(V, E, embed_dim=40, dec_dim=48, att_dim=8, dropout=p,
                           deep_output=deep_output).double().train()
    feats, caps, lengths = batch(lengths=(9, 7, 8, 9) * 8)
    rows = int((lengths - 1).sum())
    seen = dropout_inputs(dec, lambda: dec(feats, caps, lengths))
    # what each site reads: h_t (dec_dim) before L_h, tanh(...) (embed_dim) before L_o;
    # without the deep output h_t goes straight to L_o and is dropped once
    expected = {"dropout_h": 48, "dropout": 40} if deep_output else {"dropout": 48}
    assert {name: x.shape for name, (x, _) in seen.items()} == {
        name: (rows, dim) for name, dim in expected.items()}
    for name, (x, y) in seen.items():
        dropped = (y == 0) & (x != 0)
        assert abs(dropped.double().mean().item() - p) < 0.03, name
        assert torch.allclose(y[~dropped], x[~dropped] / (1 - p)), name
    train_alphas = dec(feats, caps, lengths).alphas
    seen = dropout_inputs(dec.eval(), lambda: dec(feats, caps, lengths))
    assert seen and all(torch.equal(x, y) for x, y in seen.values())
    assert torch.allclose(dec(feats, caps, lengths).alphas, train_alphas, atol=1e-12)


def test_the_step_drops_out_in_training_only():
    """advance(), the searches' step, drops out at the same sites as teacher forcing."""
    dec = make(dropout=0.5)
    feats, caps, _ = batch()
    h, c, projected = dec._initial(feats)
    eval_logits = dec.advance(caps[:, 0], h, c, feats, projected).logits
    seen = dropout_inputs(dec.train(), lambda: dec.advance(caps[:, 0], h, c, feats, projected))
    assert set(seen) == {"dropout_h", "dropout"}
    assert not torch.allclose(dec.advance(caps[:, 0], h, c, feats, projected).logits,
                              eval_logits)


def test_teacher_forcing_gradients_equal_each_caption_alone():
    # live rows are prefixes of the sorted batch: their gradients must add up per image
    dec = make().train()
    dec.dropout.p = dec.dropout_h.p = 0.0
    feats, caps, lengths = batch(lengths=(5, 3, 6, 2, 6, 3))
    feats.requires_grad_()
    params = [feats, *dec.parameters()]
    batched = torch.autograd.grad(dec(feats, caps, lengths).scores.sum(), params)
    alone = sum(dec(feats[b:b + 1], caps[b:b + 1, :n], lengths[b:b + 1]).scores.sum()
                for b, n in enumerate(lengths.tolist()))
    for got, want in zip(batched, torch.autograd.grad(alone, params), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_prefixes_gradcheck():
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: Prefixes.apply(t, (5, 3, 1)), (x,))
    with pytest.raises(ValueError, match="the first prefix must be all of x"):
        Prefixes.apply(x, (4, 2))
