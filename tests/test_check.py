"""The exercise checks accept right answers, reject wrong ones naming the mistake, reject calls
to the package's own version, and say "not written yet" (raising only under nbgrader)."""

import copy
import math
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sat_helpers import check, search
from sat_helpers.attention import SoftAttention, doubly_stochastic_penalty
from sat_helpers.check import ExerciseError
from sat_helpers.data import Vocab, encode_caption
from sat_helpers.decoder import DecoderState, lstm_update
from sat_helpers.hard import attention_entropy, reinforce_surrogate
from sat_helpers.pointing import pointing_hit
from sat_helpers.train import caption_loss


def fails(check_fn, answer, *phrases: str) -> str:
    """Run a check on a wrong answer; it must raise ExerciseError naming every phrase."""
    with pytest.raises(ExerciseError) as error:
        check_fn(answer)
    message = str(error.value)
    for phrase in phrases:
        assert phrase in message, f"{phrase!r} not in the message:\n{message}"
    assert "Hint:" in message
    return message


def passes(check_fn, answer, capsys) -> None:
    check_fn(answer)
    assert "✓" in capsys.readouterr().out


def cheats(check_fn, answer, called: str, write_from: str = "") -> None:
    fails(check_fn, answer, f"called {called}", f"Write it from {write_from}")


def unsolved(*args):
    raise NotImplementedError()


# -------------------------------------------------------------- the machinery


def test_an_unsolved_exercise_says_so_and_the_notebook_goes_on_with_the_package(capsys):
    namespace = {}
    exec("def penalty(alphas, lengths, lam):\n    raise NotImplementedError()", namespace)
    check.penalty(namespace["penalty"])
    assert "not written yet" in capsys.readouterr().out
    alphas = torch.rand(2, 3, 4).softmax(-1)
    assert torch.equal(namespace["penalty"](alphas, torch.tensor([3, 2]), 1.0),
                       doubly_stochastic_penalty(alphas, torch.tensor([3, 2]), 1.0))
    check.penalty(namespace["penalty"])  # the cell re-run without the solution's cell
    assert "still the package's stand-in" in capsys.readouterr().out


def test_under_nbgrader_an_unsolved_exercise_fails(monkeypatch):
    monkeypatch.setenv("NBGRADER_EXECUTION", "autograde")
    with pytest.raises(ExerciseError, match="not written yet"):
        check.penalty(unsolved)


def test_a_crash_is_reported_as_what_it_is():
    fails(check.to_annotations, lambda fmap: fmap.view(7, -1), "raised RuntimeError",
          "feature map of shape", "shapes")
    def strict_lookup(tokens, vocab, max_len):
        ids = [vocab.start_id, *[vocab.stoi[w] for w in tokens], vocab.end_id]
        return ids + [vocab.pad_id] * (max_len + 2 - len(ids))

    fails(check.encode, strict_lookup, "raised KeyError", "the key 'purple' is not there",
          "at line", "vocab.stoi[w]")


def test_the_learner_sees_the_message_not_the_checker():
    with pytest.raises(ExerciseError) as error:
        check.encode(lambda t, v, m: [])
    assert error.value.__cause__ is None and error.value.__suppress_context__
    assert error.value._render_traceback_()[0].startswith("ExerciseError: encode:")
    assert "check.py" not in "".join(error.value._render_traceback_())


def test_hints_come_in_two_levels(capsys):
    message = fails(check.best_caption, lambda s, n, g: int(np.argmax(s)), "plain summed")
    assert "** length_penalty" not in message and "check.hint('best_caption')" in message
    check.hint("best_caption")
    assert "** length_penalty" in capsys.readouterr().out
    with pytest.raises(ValueError, match="no exercise"):
        check.hint("nonsense")


def test_a_swallowed_call_to_the_package_is_still_seen():
    def sneaky(alphas, lengths, lam):
        try:
            return doubly_stochastic_penalty(alphas, lengths, lam)
        except BaseException:  # noqa: BLE001
            return doubly_stochastic_penalty.__wrapped__ if False else torch.tensor(0.0)

    cheats(check.penalty, sneaky, "sat_helpers.attention.doubly_stochastic_penalty",
           "the equation")


def test_a_missing_return_is_named():
    def no_return(tokens, vocab, max_len):
        [vocab.start_id, *map(vocab.stoi.get, tokens)]

    fails(check.encode, no_return, "returned None", "did you forget `return`?")


def test_a_wrong_signature_gets_the_expected_one():
    def two_arguments(tokens, vocab):
        return [vocab.start_id]

    message = fails(check.encode, two_arguments, "cannot be called with the task's 3 arguments")
    assert "`def two_arguments(tokens, vocab, max_len)`" in message
    fails(check.attention, lambda a, h: None, "`def attention(a, h, W_a, b, W_h, w)`")


def test_a_call_to_a_library_names_it_and_what_to_write_from():
    from nltk.translate.bleu_score import brevity_penalty

    message = fails(check.brevity_penalty, lambda r, h: brevity_penalty(10, 9),
                    "called nltk.translate.bleu_score.brevity_penalty, nltk's implementation")
    assert "the package's own version" not in message
    message = fails(check.vocabulary, lambda c, m: Vocab.build(c, m).words, "Write it from the "
                    "operations the task names")
    assert "equations" not in message


def test_checks_leave_the_random_state_and_the_package_alone():
    torch.manual_seed(0)
    before = torch.random.get_rng_state()
    check.attention(attend)
    with pytest.raises(ExerciseError):
        check.penalty(lambda al, n, lam: doubly_stochastic_penalty(al, n, lam))
    assert torch.equal(torch.random.get_rng_state(), before)
    alphas = torch.full((1, 2, 2), 0.5)
    assert float(doubly_stochastic_penalty(alphas, torch.tensor([2]), 1.0)) == 0.0


# -------------------------------------------------------------- 01


def vocabulary_words(captions, min_freq, keep=lambda c, m: c >= m, order=True, per_caption=False):
    counts = Counter(w for tokens in captions for w in (set(tokens) if per_caption else tokens))
    kept = [w for w, c in counts.items() if keep(c, min_freq)]
    return sorted(kept, key=lambda w: (-counts[w], w) if order else w)


def test_vocabulary(capsys):
    passes(check.vocabulary, vocabulary_words, capsys)
    fails(check.vocabulary, lambda c, m: vocabulary_words(c, m, keep=lambda c, m: c > m),
          "drops", "exactly min_freq times")
    fails(check.vocabulary, lambda c, m: vocabulary_words(c, m, order=False),
          "another order", "most frequent first")
    fails(check.vocabulary, lambda c, m: ["<pad>", *vocabulary_words(c, m)], "specials")
    fails(check.vocabulary, lambda c, m: vocabulary_words(c, m, per_caption=True),
          "counted the captions that contain each word", "every occurrence")
    cheats(check.vocabulary, lambda c, m: Vocab.build(c, m).words,
           "sat_helpers.captions.Vocab.build", "the operations the task names")


def encode_row(tokens, vocab, max_len, unknown=True, pad=True):
    ids = [vocab.stoi.get(t, vocab.unk_id) for t in tokens if unknown or t in vocab]
    ids = [vocab.start_id, *ids, vocab.end_id]
    return ids + [vocab.pad_id] * (max_len + 2 - len(ids)) * pad


def test_encode(capsys):
    passes(check.encode, encode_row, capsys)
    fails(check.encode, lambda t, v, m: encode_row(t, v, m, pad=False), "max_len + 2")
    fails(check.encode, lambda t, v, m: encode_row(t, v, m, unknown=False),
          "'purple' is not in the vocabulary", "<unk>")
    cheats(check.encode, encode_caption, "sat_helpers.captions.encode_caption",
           "the vocabulary's ids")
    cheats(check.encode, lambda t, v, m: [v.start_id, *v.encode(t), v.end_id]
           + [0] * (m - len(t)), "sat_helpers.captions.Vocab.encode", "the vocabulary's ids")


# -------------------------------------------------------------- 02


def test_to_annotations(capsys):
    passes(check.to_annotations, lambda f: f.flatten(2).transpose(1, 2), capsys)
    fails(check.to_annotations, lambda f: f.reshape(f.shape[0], -1, f.shape[1]),
          "entries differ", "without moving the channels last")
    fails(check.to_annotations,
          lambda f: f.permute(0, 3, 2, 1).reshape(f.shape[0], -1, f.shape[1]), "column by column")
    from sat_helpers.encoder import annotations
    cheats(check.to_annotations, annotations, "sat_helpers.encoder.annotations",
           "tensor operations")


def test_cut_classifier(capsys):
    passes(check.cut_classifier, lambda m: nn.Sequential(*list(m.children())[:-2]), capsys)
    fails(check.cut_classifier, lambda m: nn.Sequential(*list(m.children())[:-1]),
          "shape (2, 512, 1, 1)", "global average pooling")
    fails(check.cut_classifier, lambda m: nn.Sequential(*list(m.children())[:-3]),
          "256 channels", "layer4")
    fails(check.cut_classifier, lambda m: copy.deepcopy(nn.Sequential(*list(m.children())[:-2])),
          "not the model's own", "copies")
    from sat_helpers.encoder import get_spec
    cheats(check.cut_classifier,
           lambda m: nn.Sequential(*(b for _, b in get_spec("resnet18").trunk(m))),
           "sat_helpers.encoder.get_spec", "the model's own children")


# -------------------------------------------------------------- 03


def attention_step(att, a, h, bias=True, dim=1, gated=True):
    x = a @ att.W_a.weight.T + (att.W_a.bias if bias else 0) + att.W_h(h).unsqueeze(1)
    e = att.w(torch.tanh(x)).squeeze(-1)
    alpha = e.softmax(dim=dim)
    return (alpha.unsqueeze(-1) * a).sum(1) if gated else a.mean(1), alpha, e


def test_attention_step(capsys):
    passes(check.attention_step, attention_step, capsys)
    fails(check.attention_step, lambda *x: attention_step(*x, bias=False), "α differs",
          "bias b is missing")
    fails(check.attention_step, lambda *x: attention_step(*x, dim=0), "over the batch")
    fails(check.attention_step, lambda *x: attention_step(*x, gated=False), "ẑ differs",
          "plain mean")
    fails(check.attention_step, lambda att, a, h: attention_step(att, a, h)[::-1][1:],
          "expected a triple")
    fails(check.attention_step, lambda att, a, h: attention_step(att, a, h)[::-1],
          "the outputs are in another order: return (z_hat, alpha, e)", "(e, alpha, z_hat)")
    fails(check.attention_step, lambda *x: (lambda z, al, e: (al, e, z))(*attention_step(*x)),
          "another order: return (z_hat, alpha, e)", "you returned (alpha, e, z_hat)")
    cheats(check.attention_step, lambda att, a, h: (*att(a, h), None),
           "sat_helpers.attention.SoftAttention.forward")


def attend(a, h, W_a, b, W_h, w, dim=-1, grad=True):
    with torch.set_grad_enabled(grad):
        e = torch.tanh((a @ W_a.T + b).unsqueeze(1) + (h @ W_h.T).unsqueeze(2)) @ w
        alpha = e.softmax(dim=dim)
        return alpha @ a, alpha


def test_attention(capsys):
    passes(check.attention, attend, capsys)
    fails(check.attention, lambda *x: attend(*x, dim=1), "alpha", "do not sum to 1")
    fails(check.attention, lambda *x: attend(*x, grad=False), "no gradient")
    fails(check.attention, lambda *x: attend(*x)[::-1],
          "the outputs are in another order: return (z_hat, alpha)")

    def functional(a, h, W_a, b, W_h, w):
        att = SoftAttention(a.shape[-1], h.shape[-1], W_a.shape[0])
        params = {"W_a.weight": W_a, "W_a.bias": b, "W_h.weight": W_h, "w.weight": w[None]}
        return torch.func.functional_call(att, params, (a, h))

    cheats(check.attention, functional, "sat_helpers.attention.SoftAttention.forward")


def summed_penalty(alphas, lengths, lam):
    real = torch.arange(alphas.shape[1]) < lengths[:, None]
    return lam * ((1 - (alphas * real[..., None]).sum(1)) ** 2).sum(-1).mean()


def test_penalty(capsys):
    passes(check.penalty, lambda al, n, lam: lam * ((1 - (al * (torch.arange(al.shape[1])
           < n[:, None])[..., None]).sum(1)) ** 2).mean(), capsys)
    fails(check.penalty, lambda al, n, lam: lam * ((1 - al.sum(1)) ** 2).mean(),
          "the penalty is", "padding steps count")
    fails(check.penalty, summed_penalty, "summed over the L positions", "section 8")
    fails(check.penalty, lambda al, n, lam: summed_penalty(al, n, lam)[None], "shape (1,)",
          "0-d tensor")
    cheats(check.penalty, doubly_stochastic_penalty,
           "sat_helpers.attention.doubly_stochastic_penalty")


# -------------------------------------------------------------- 04


def decoder_step(d, y_prev, h, c, a, projected, gate=True, deep_tanh=True, embed_out=True,
                 swap=False):
    att = d.attention
    alpha = att.w(torch.tanh(projected + att.W_h(h).unsqueeze(1))).squeeze(-1).softmax(-1)
    z = (alpha.unsqueeze(-1) * a).sum(1) * (torch.sigmoid(d.f_beta(h)) if gate else 1)
    Ey = d.embedding(y_prev)
    i, f, g, o = (d.lstm_emb(Ey) + d.lstm_hh(h) + d.lstm_ctx(z)).chunk(4, -1)
    c_t = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h_t = torch.sigmoid(o) * torch.tanh(c_t)
    inner = Ey * embed_out + d.L_h(h_t) + d.L_z(z)
    logits = d.L_o(torch.tanh(inner) if deep_tanh else inner)
    return (logits, c_t, h_t, alpha) if swap else (logits, h_t, c_t, alpha)


def test_decoder_step(capsys):
    passes(check.decoder_step, decoder_step, capsys)
    fails(check.decoder_step, lambda *x: decoder_step(*x, gate=False), "h_t differ",
          "gated context")
    fails(check.decoder_step, lambda *x: decoder_step(*x, embed_out=False),
          "h_t is right but the logits differ", "E y_{t-1} is missing")
    fails(check.decoder_step, lambda *x: decoder_step(*x, deep_tanh=False), "tanh")
    fails(check.decoder_step, lambda *x: decoder_step(*x, swap=True), "swapped")
    cheats(check.decoder_step, lambda d, y, h, c, a, p: tuple(d.advance(y, h, c, a, p))[:4],
           "sat_helpers.decoder.AttentionDecoder.advance")

    def with_lstm_update(d, y_prev, h, c, a, projected):
        logits, h_t, c_t, alpha = decoder_step(d, y_prev, h, c, a, projected)
        lstm_update(torch.zeros(1, 4), torch.zeros(1, 1))
        return logits, h_t, c_t, alpha

    cheats(check.decoder_step, with_lstm_update, "sat_helpers.decoder.lstm_update")


def loss(scores, alphas, captions, lengths, lam, mask=True, shift=1, penalty=True):
    steps = scores.shape[1]
    targets = captions[:, shift:steps + shift]
    real = torch.arange(steps) < (lengths - 1)[:, None]
    if not mask:
        real = torch.ones_like(real)
    ce = F.cross_entropy(scores[real], targets[real])
    return ce + doubly_stochastic_penalty(alphas, lengths - 1, lam) * penalty


def test_loss(capsys):
    passes(check.loss, loss, capsys)
    fails(check.loss, lambda *x: loss(*x, mask=False), "padding positions count")
    fails(check.loss, lambda *x: loss(*x, shift=0), "targets are not shifted")
    fails(check.loss, lambda *x: loss(*x, penalty=False), "lam=1.0", "penalty is missing")
    fails(check.loss, lambda *x: loss(*x).detach(), "no gradient")

    def steps_counted(scores, alphas, captions, lengths, lam):
        return loss(scores, alphas, captions, lengths, 0.0) + doubly_stochastic_penalty(
            alphas, lengths, lam)

    fails(check.loss, steps_counted, "penalty counts one step too many", "lengths − 1",
          "<start> is an input")
    from types import SimpleNamespace

    from sat_helpers.decoder import DecoderOutput
    cheats(check.loss, lambda s, a, c, n, lam: caption_loss(DecoderOutput(s, a, None, None), c, n,
                                                             SimpleNamespace(lam=lam))[0],
           "sat_helpers.losses.caption_loss")


# -------------------------------------------------------------- 05


def greedy(decoder, features, max_len, vocab, drop=True, mask_never=True, cap=True):
    never = [vocab.pad_id, vocab.start_id, vocab.unk_id]
    with torch.no_grad():
        state = decoder.init_state(features)
        prev = torch.full((len(features),), vocab.start_id)
        live, out = torch.arange(len(features)), [[] for _ in features]
        done = torch.zeros(len(features), dtype=torch.bool)
        for _ in range(max_len if cap else max_len + 3):
            log_probs, _, state = decoder.step(state, prev)
            if mask_never:
                log_probs[:, never] = -math.inf
            prev = log_probs.argmax(-1)
            for row, image in enumerate(live.tolist()):
                if not done[image] and prev[row] != vocab.end_id:
                    out[image].append(int(prev[row]))
            ended = prev == vocab.end_id
            done[live[ended]] = True
            if drop:
                keep = ~ended
                live, prev = live[keep], prev[keep]
                state = state._replace(h=state.h[keep], c=state.c[keep],
                                       features=state.features[keep],
                                       projected=state.projected[keep])
            if bool(done.all()):
                break
    return out


def test_greedy_search(capsys):
    passes(check.greedy_search, greedy, capsys)
    fails(check.greedy_search, lambda *x: greedy(*x, drop=False), "only", "had not ended",
          "drop an image")
    fails(check.greedy_search, lambda *x: greedy(*x, mask_never=False), "never emits")
    fails(check.greedy_search, lambda *x: greedy(*x, cap=False), "max_len")
    cheats(check.greedy_search,
           lambda d, f, m, v: [c.tokens for c in search.greedy_search(d, f, m, vocab=v)],
           "sat_helpers.search.greedy_search")


def beam_step(scores, log_probs, n, add=True, split=True):
    vocab_size = log_probs.shape[-1]
    candidates = ((scores.unsqueeze(-1) if add else 0) + log_probs).flatten(1)
    top, index = candidates.topk(n, dim=1)
    return top, index // vocab_size, index % vocab_size if split else index


def test_beam_step(capsys):
    passes(check.beam_step, beam_step, capsys)
    fails(check.beam_step, lambda s, lp, n: beam_step(s, lp, n, add=False), "top_scores",
          "log-probabilities alone")
    fails(check.beam_step, lambda s, lp, n: beam_step(s, lp, n, split=False), "token", "flat")
    cheats(check.beam_step, lambda s, lp, n: search.best_extensions(s, lp, n),
           "sat_helpers.search.best_extensions")


def test_reorder(capsys):
    passes(check.reorder, lambda h, beam: h[torch.arange(h.shape[0])[:, None], beam], capsys)
    fails(check.reorder, lambda h, beam: h[:, beam], "shape (2, 2, 3, 4)", "mixes images")
    fails(check.reorder, lambda h, beam: h.gather(1, beam[..., None]), "shape (2, 3, 1)",
          "as large as its output")
    fails(check.reorder, lambda h, beam: h, "entries differ", "h[b, beam[b, j]]")
    cheats(check.reorder, lambda h, beam: DecoderState(h, h, h, h).reorder(beam).h,
           "sat_helpers.decoder.DecoderState.reorder")


def test_best_caption(capsys):
    def best(scores, lengths, gamma, minus=0):
        return max(range(len(scores)),
                   key=lambda i: scores[i] / ((5 + lengths[i] - minus) / 6) ** gamma)

    passes(check.best_caption, best, capsys)
    fails(check.best_caption, lambda s, n, g: best(s, n, g, minus=1), "length − 1")
    fails(check.best_caption, lambda s, n, g: max(range(len(s)),
          key=lambda i: s[i] * ((5 + n[i]) / 6) ** g), "multiplied")
    fails(check.best_caption, lambda s, n, g: int(np.argmax(s)), "plain summed log-probability")
    fails(check.best_caption, lambda s, n, g: max(range(len(s)), key=lambda i: s[i] / n[i] ** g),
          "((5 + |y|) / 6)^γ, not |y|^γ")
    fails(check.best_caption, lambda s, n, g: int(np.argmin(s)), "picked the worst")
    cheats(check.best_caption, lambda s, n, g: int(np.argmax(
        [search.length_normalised(x, k, g) for x, k in zip(s, n, strict=True)])),
        "sat_helpers.search.length_normalised")


# -------------------------------------------------------------- 06


def clipped(refs, hyp, n, clip=True, by_max=True):
    def grams(tokens):
        return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))

    most = Counter()
    for ref in refs:
        most = most | grams(ref) if by_max else most + grams(ref)
    counts = grams(hyp)
    return (sum(min(c, most[g]) if clip else c * (g in most) for g, c in counts.items()),
            sum(counts.values()))


def test_clipped_precision(capsys):
    passes(check.clipped_precision, clipped, capsys)
    fails(check.clipped_precision, lambda r, h, n: clipped(r, h, n, clip=False), "(clipping)")
    fails(check.clipped_precision, lambda r, h, n: clipped(r, h, n, by_max=False),
          "not by the sum over the references")
    from nltk.translate.bleu_score import modified_precision
    cheats(check.clipped_precision, lambda r, h, n: (modified_precision(r, h, n).numerator,
                                                     len(h) - n + 1),
           "nltk.translate.bleu_score.modified_precision")


def brevity(references, hypotheses, tie_short=True, clamp=True, corpus=True):
    if not corpus:
        pairs = zip(references, hypotheses, strict=True)
        return float(np.mean([brevity([r], [h]) for r, h in pairs]))
    c = sum(len(h) for h in hypotheses)
    r = sum(min((abs(len(x) - len(h)), len(x) * (1 if tie_short else -1)) for x in refs)[1]
            * (1 if tie_short else -1) for refs, h in zip(references, hypotheses, strict=True))
    return 1.0 if c > r and clamp else math.exp(1 - r / c)


def test_brevity_penalty(capsys):
    passes(check.brevity_penalty, brevity, capsys)
    fails(check.brevity_penalty, lambda r, h: brevity(r, h, tie_short=False), "on a tie")
    fails(check.brevity_penalty, lambda r, h: brevity(r, h, clamp=False), "never exceeds 1")
    fails(check.brevity_penalty, lambda r, h: brevity(r, h, corpus=False), "per-image")
    from nltk.translate.bleu_score import corpus_bleu
    cheats(check.brevity_penalty, lambda r, h: corpus_bleu(r, h, weights=(1,)),
           "nltk.translate.bleu_score.corpus_bleu")


def test_hit(capsys):
    passes(check.hit, lambda m, mask: float(mask[m == m.max()].mean()), capsys)
    fails(check.hit, lambda m, mask: float(m[mask].sum() / m.sum()), "attention mass")
    fails(check.hit, lambda m, mask: float(mask.flat[m.argmax()]), "three tied peaks",
          "tied maxima")
    cheats(check.hit, pointing_hit, "sat_helpers.pointing.pointing_hit", "numpy comparisons")


# -------------------------------------------------------------- 07


def test_surrogate(capsys):
    def term(log_lik, log_prob, b, detach=True, baseline=True, detach_reward=True):
        advantage = log_lik - (b if baseline else 0.0)
        advantage = advantage.detach() if detach_reward else advantage
        return advantage * (log_prob - log_prob.detach() * detach)

    passes(check.surrogate, term, capsys)
    fails(check.surrogate, lambda ll, lp, b: term(ll, lp, b, detach=False),
          "the term's value", "value must be 0")
    fails(check.surrogate, lambda ll, lp, b: term(ll, lp, b, baseline=False),
          "gradient with respect to log p(s̃|a)", "b=-11.0", "baseline is missing")
    message = fails(check.surrogate, lambda ll, lp, b: (ll - b).detach() * (lp.detach() - lp),
                    "gradient with respect to log p(s̃|a)", "wrong sign", "zero factor is reversed")
    assert "subtract the baseline" not in message
    fails(check.surrogate, lambda ll, lp, b: term(ll, lp, b).detach(), "no gradient")
    fails(check.surrogate, lambda ll, lp, b: term(ll, lp, b, detach_reward=False),
          "still in the term's graph", "detach it")
    cheats(check.surrogate, reinforce_surrogate, "sat_helpers.losses.reinforce_surrogate")


def test_entropy(capsys):
    passes(check.entropy, lambda a: -torch.special.xlogy(a, a).sum(-1), capsys)
    fails(check.entropy, lambda a: -(a * a.log()).sum(-1), "one-hot", "NaN")
    fails(check.entropy, lambda a: -(a * a.clamp_min(1e-12).log2()).sum(-1), "bits")
    fails(check.entropy, lambda a: -(a * a.clamp_min(1e-12).log()).sum(), "last axis only")
    cheats(check.entropy, attention_entropy, "sat_helpers.attention.attention_entropy")


def reinforce(theta, log_lik, samples, decay, baseline=True, after=False, minus_alpha=True):
    alpha, b, rows = theta.softmax(-1), 0.0, []
    for s in samples.tolist():
        if after:
            b = decay * b + (1 - decay) * float(log_lik[s])
        score = F.one_hot(torch.tensor(s), len(theta)) - alpha * minus_alpha
        rows.append((log_lik[s] - b * baseline) * score)
        if not after:
            b = decay * b + (1 - decay) * float(log_lik[s])
    return torch.stack(rows)


def test_reinforce_gradient(capsys):
    passes(check.reinforce_gradient, reinforce, capsys)
    fails(check.reinforce_gradient, lambda *x: reinforce(*x, baseline=False), "no baseline")
    fails(check.reinforce_gradient, lambda *x: reinforce(*x, after=True), "biased")
    fails(check.reinforce_gradient, lambda *x: -reinforce(*x), "the sign")
    fails(check.reinforce_gradient, lambda *x: reinforce(*x, minus_alpha=False),
          "− α is missing", "onehot(s) − α")

    def with_surrogate(theta, log_lik, samples, decay):
        reinforce_surrogate(torch.zeros(1), torch.zeros(1), 0.0)
        return reinforce(theta, log_lik, samples, decay)

    cheats(check.reinforce_gradient, with_surrogate, "sat_helpers.losses.reinforce_surrogate")
