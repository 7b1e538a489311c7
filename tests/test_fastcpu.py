"""The CPU decoding path computes what the plain step computes, and runs only where it may."""

import pytest
import torch

from sat_helpers import fastcpu
from sat_helpers.attention import SoftAttention
from sat_helpers.data import Vocab
from sat_helpers.decoder import AttentionDecoder
from sat_helpers.search import beam_search, greedy_search

V, E, P = 11, 6, 5


def make(**kw) -> AttentionDecoder:
    torch.manual_seed(0)
    return AttentionDecoder(V, E, embed_dim=4, dec_dim=7, att_dim=3, **kw).eval()


def features(n=4, p=P, e=E):
    torch.manual_seed(1)
    return torch.randn(n, p, e)


@pytest.mark.parametrize("onednn", [True, False])
@pytest.mark.parametrize("attention", ["soft", "hard"])
@pytest.mark.parametrize("gate", ["scalar", "vector", None])
@pytest.mark.parametrize("deep_output", [True, False])
def test_cpu_step_equals_the_plain_step(deep_output, gate, attention, onednn, monkeypatch):
    if onednn and not fastcpu.onednn_works():
        pytest.skip("this torch build has no oneDNN linear")
    monkeypatch.setattr(fastcpu, "onednn_works", lambda: onednn)
    dec = make(gate=gate, deep_output=deep_output, attention=attention)
    feats = features()
    with torch.no_grad():
        fast = plain = dec.init_state(feats)
        assert fastcpu.applies(dec, fast)
    assert all(w.is_mkldnn == onednn for w, _ in fastcpu.prepared_weights(dec).values())

    def plain_step(state, prev):
        monkeypatch.setattr(fastcpu, "ENABLED", False)
        out = dec.step(state, prev)
        monkeypatch.setattr(fastcpu, "ENABLED", True)
        return out

    tokens = torch.randint(4, V, (4, 3), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        for beams in (False, True):  # greedy's (B, ·) rows and beam search's (B, k, ·)
            a, b = (fast.expand(2), plain.expand(2)) if beams else (fast, plain)
            for t in range(3):
                prev = tokens[:, t, None].expand(-1, 2) if beams else tokens[:, t]
                lp_fast, alpha_fast, a = dec.step(a, prev)
                lp_plain, alpha_plain, b = plain_step(b, prev)
                torch.testing.assert_close(lp_fast, lp_plain, rtol=0, atol=1e-5)
                torch.testing.assert_close(alpha_fast, alpha_plain, rtol=0, atol=1e-6)
                torch.testing.assert_close(a.h, b.h, rtol=0, atol=1e-6)
                torch.testing.assert_close(a.c, b.c, rtol=0, atol=1e-6)


def test_same_captions_greedy_and_beam(monkeypatch):
    torch.manual_seed(3)
    vocab = Vocab([f"w{i}" for i in range(30)])
    dec = AttentionDecoder(len(vocab), 32, embed_dim=16, dec_dim=24, att_dim=16).eval()
    with torch.no_grad():
        dec.L_o.weight.mul_(4.0)
    feats = torch.randn(10, 49, 32) * torch.linspace(0.5, 3.0, 10).view(10, 1, 1)

    def captions():
        greedy = greedy_search(dec, feats, 12, vocab=vocab)
        beams = beam_search(dec, feats, 4, 12, vocab=vocab, return_all=True)
        return greedy + [c for hyps in beams for c in hyps]

    fast = captions()
    monkeypatch.setattr(fastcpu, "ENABLED", False)
    plain = captions()
    assert len({tuple(c.tokens) for c in plain}) > 10  # varied captions, not one repeated
    assert [c.tokens for c in fast] == [c.tokens for c in plain]
    assert [c.score for c in fast] == pytest.approx([c.score for c in plain], abs=1e-4)
    assert all(torch.allclose(a.alphas, b.alphas, atol=1e-5) for a, b in zip(fast, plain,
                                                                                strict=True))


def test_only_float32_on_the_cpu_without_autograd_in_eval_mode():
    dec, feats = make(), features()
    with torch.no_grad():
        state = dec.init_state(feats)
        assert fastcpu.applies(dec, state)
        assert not fastcpu.applies(dec, state._replace(features=feats.to("meta")))  # CUDA, ...
        assert not fastcpu.applies(dec.double(), dec.init_state(feats.double()))
        dec.float()
        assert not fastcpu.applies(dec.train(), state)  # dropout, sampled hard attention
        dec.eval()
    assert not fastcpu.applies(dec, state)  # autograd on: the plain step
    log_probs, _, _ = dec.step(state, torch.full((4,), 1))
    log_probs.sum().backward()
    assert dec.L_o.weight.grad is not None and dec.L_o.weight.grad.abs().sum() > 0


# ------------------------------------------------------------------ a learner's change
def searches(dec, vocab, feats):
    """Greedy and beam captions (tokens, rounded scores) of ``feats``, on the CPU."""
    greedy = greedy_search(dec, feats, 8, vocab=vocab)
    beams = beam_search(dec, feats, 3, 8, vocab=vocab)
    return [(c.tokens, round(c.score, 4)) for c in greedy + beams]


def searches_both_paths(dec, vocab, feats, monkeypatch):
    """(captions as the package decodes them, captions through the plain step alone)."""
    ours = searches(dec, vocab, feats)
    monkeypatch.setattr(fastcpu, "ENABLED", False)
    plain = searches(dec, vocab, feats)
    monkeypatch.setattr(fastcpu, "ENABLED", True)
    return ours, plain


def learner_setup():
    torch.manual_seed(5)
    vocab = Vocab([f"w{i}" for i in range(30)])
    dec = AttentionDecoder(len(vocab), 32, embed_dim=16, dec_dim=24, att_dim=16).eval()
    with torch.no_grad():
        dec.L_o.weight.mul_(4.0)
    return dec, vocab, torch.randn(6, 49, 32)


class NoRepeats(AttentionDecoder):
    """A learner's decoder: the previous word may not come again (its logit pushed down)."""

    def advance(self, prev_tokens, h, c, features, projected):
        out = super().advance(prev_tokens, h, c, features, projected)
        logits = out.logits.scatter_add(-1, prev_tokens.unsqueeze(-1),
                                        torch.full_like(prev_tokens, -50.0,
                                                        dtype=out.logits.dtype).unsqueeze(-1))
        return out._replace(logits=logits)


def test_a_subclass_changes_every_search_on_the_cpu(monkeypatch):
    dec, vocab, feats = learner_setup()
    original, _ = searches_both_paths(dec, vocab, feats, monkeypatch)
    learner = NoRepeats(**dec.config).eval()
    learner.load_state_dict(dec.state_dict())
    with torch.no_grad():
        assert not fastcpu.applies(learner, learner.init_state(feats))
    ours, plain = searches_both_paths(learner, vocab, feats, monkeypatch)
    assert ours == plain and ours != original


def test_a_patched_attention_method_changes_every_search_on_the_cpu(monkeypatch):
    dec, vocab, feats = learner_setup()
    original, _ = searches_both_paths(dec, vocab, feats, monkeypatch)
    shipped = SoftAttention.scores

    def sharper(self, projected, query, mask=None):  # a learner's tweak: a temperature of 0.25
        return 4 * shipped(self, projected, query, mask)

    monkeypatch.setattr(SoftAttention, "scores", sharper)
    with torch.no_grad():
        assert not fastcpu.applies(dec, dec.init_state(feats))
    ours, plain = searches_both_paths(dec, vocab, feats, monkeypatch)
    assert ours == plain and ours != original
    monkeypatch.undo()
    with torch.no_grad():  # the class as shipped again: the fast path is back
        assert fastcpu.applies(dec, dec.init_state(feats))
