"""Greedy and beam search: exhaustive on a tiny model, batched = one by one, k=1 = greedy."""

import itertools

import pytest
import torch

from sat_helpers import fastcpu
from sat_helpers.data import Vocab
from sat_helpers.decoder import AttentionDecoder, DecoderState
from sat_helpers.search import beam_search, greedy_search, length_normalised

P, ENC = 5, 6


def make(device, words=("red", "circle", "star"), seed=0, scale=3.0, end_bias=0.0):
    """A random decoder with sharp enough distributions that the search matters."""
    torch.manual_seed(seed)
    vocab = Vocab(list(words))
    dec = AttentionDecoder(len(vocab), ENC, embed_dim=4, dec_dim=7, att_dim=3).double().to(device)
    with torch.no_grad():
        dec.L_o.weight.mul_(scale)
        dec.L_o.bias.mul_(scale)
        dec.L_o.bias[vocab.end_id] += end_bias
    return dec, vocab


def features(n, device, seed=1):
    torch.manual_seed(seed)
    return torch.randn(n, P, ENC, dtype=torch.float64).to(device)


def teacher_forced(dec, vocab, feats, sequences):
    """Summed log-probs and alphas of (tokens, ended) pairs by the decoder's forward(), batched."""
    ids = [[vocab.start_id, *tokens] + [vocab.end_id] * ended for tokens, ended in sequences]
    lengths = torch.tensor([len(x) for x in ids])
    captions = torch.tensor([x + [vocab.pad_id] * (max(lengths) - len(x)) for x in ids],
                            device=feats.device)
    with torch.no_grad():
        out = dec.eval()(feats.expand(len(ids), -1, -1), captions, lengths)
    log_probs = out.scores.log_softmax(-1).gather(2, captions[:, 1:].unsqueeze(2)).squeeze(2)
    real = torch.arange(captions.shape[1] - 1) < (lengths - 1).unsqueeze(1)
    return (log_probs.cpu() * real).sum(1).tolist(), out.alphas


def exhaustive_best(dec, vocab, feats, max_len, alpha):
    """Best sequence by the search's rule: finished ones first, ranked by normalised score."""
    words = range(4, len(vocab))
    sequences = [(list(seq), ended) for n in range(max_len + 1)  # max_len words, <end> extra
                 for seq in itertools.product(words, repeat=n)
                 for ended in ((True, False) if n == max_len else (True,))]
    scores, _ = teacher_forced(dec, vocab, feats, sequences)
    keys = [(ended, length_normalised(score, len(tokens) + ended, alpha))
            for (tokens, ended), score in zip(sequences, scores, strict=True)]
    best = max(range(len(keys)), key=keys.__getitem__)
    return sequences[best][0], scores[best]


@pytest.mark.parametrize("alpha", [0.0, 1.5])
@pytest.mark.parametrize("end_bias", [0.0, -2.0])
def test_wide_beam_is_exhaustive(alpha, end_bias, device):
    dec, vocab = make(device, end_bias=end_bias)
    feats = features(3, device)
    max_len = 4
    got = beam_search(dec, feats, 128, max_len, vocab=vocab, length_penalty=alpha)
    for i, caption in enumerate(got):
        tokens, score = exhaustive_best(dec, vocab, feats[i], max_len, alpha)
        assert caption.tokens == tokens
        assert caption.score == pytest.approx(score, abs=1e-4)


@pytest.mark.parametrize("search", ["greedy", "beam"])
def test_score_and_alphas_are_the_decoders(search, device):
    dec, vocab = make(device, end_bias=-1.0)
    feats = features(4, device)
    if search == "greedy":
        got = greedy_search(dec, feats, 6, vocab=vocab)
    else:
        got = beam_search(dec, feats, 3, 6, vocab=vocab, length_penalty=0.7)
    for i, caption in enumerate(got):
        (score,), alphas = teacher_forced(dec, vocab, feats[i], [(caption.tokens, caption.ended)])
        n = len(caption.tokens) + caption.ended
        assert caption.score == pytest.approx(score, abs=1e-4)
        assert caption.alphas.shape == (n, P)
        assert torch.allclose(caption.alphas.double(), alphas[0, :n], atol=1e-5)
        assert caption.alphas.device == feats.device
        assert caption.words == [vocab.itos[t] for t in caption.tokens]


@pytest.mark.parametrize("beam_size", [1, 3])
def test_batched_equals_one_at_a_time(beam_size, device):
    dec, vocab = make(device, end_bias=-1.0)
    feats = features(6, device)
    batched = beam_search(dec, feats, beam_size, 7, vocab=vocab, return_all=True)
    for i in range(len(feats)):
        alone = beam_search(dec, feats[i : i + 1], beam_size, 7, vocab=vocab, return_all=True)[0]
        assert [c.tokens for c in alone] == [c.tokens for c in batched[i]]
        assert [c.score for c in alone] == pytest.approx([c.score for c in batched[i]], abs=1e-5)
    greedy = greedy_search(dec, feats, 7, vocab=vocab)
    assert [c.tokens for c in greedy] == [
        greedy_search(dec, feats[i : i + 1], 7, vocab=vocab)[0].tokens for i in range(len(feats))
    ]


# CPU only: the packed (oneDNN) weights are a CPU speed path.
@pytest.mark.parametrize("search", ["greedy", "beam"])
def test_float32_search_on_the_cpu_path_equals_the_plain_step(search, monkeypatch):
    """sat_helpers.fastcpu (packed weights, blocked scores) gives the plain step's captions."""
    torch.manual_seed(25)  # picked so that images end after 1 to 7 words, or never
    vocab = Vocab([f"w{i}" for i in range(20)])
    dec = AttentionDecoder(len(vocab), 16, embed_dim=8, dec_dim=16, att_dim=8)
    with torch.no_grad():
        dec.embedding.weight.normal_()  # words far apart (the init is 0.01): captions differ
        dec.L_o.weight.mul_(4.0)
        dec.L_o.bias[vocab.end_id] += 1.0
    feats = torch.randn(12, P, 16) * torch.linspace(0.5, 3.0, 12).view(12, 1, 1)
    before = feats.clone()

    def run(images):
        if search == "greedy":
            return greedy_search(dec, images, 10, vocab=vocab)
        return [c for hyps in beam_search(dec, images, 3, 10, vocab=vocab, return_all=True)
                for c in hyps]

    with torch.no_grad():
        assert fastcpu.applies(dec.eval(), dec.init_state(feats))  # the CPU path is taken
    packed = run(feats)
    monkeypatch.setattr(fastcpu, "ENABLED", False)
    with torch.no_grad():
        assert not fastcpu.applies(dec.eval(), dec.init_state(feats))  # the plain step, as on CUDA
    plain = run(feats)
    assert torch.equal(feats, before)  # dropping finished images never writes the caller's tensor
    assert len({len(c.tokens) for c in plain if c.ended}) >= 3  # they end at different steps
    alone = [c for i in range(len(feats)) for c in run(feats[i : i + 1])]
    assert [c.tokens for c in alone] == [c.tokens for c in plain]  # the dropping is right
    assert [c.tokens for c in packed] == [c.tokens for c in plain]
    assert [c.score for c in packed] == pytest.approx([c.score for c in plain], abs=1e-4)
    assert all(torch.allclose(a.alphas, b.alphas, atol=1e-5)
               for a, b in zip(packed, plain, strict=True))


@pytest.mark.parametrize("end_bias", [0.0, -1.5, -3.0])
def test_beam_one_is_greedy(end_bias, device):
    dec, vocab = make(device, words=("a", "b", "c", "d", "e"), end_bias=end_bias)
    feats = features(8, device)
    greedy = greedy_search(dec, feats, 6, vocab=vocab)
    beam = beam_search(dec, feats, 1, 6, vocab=vocab)
    assert [c.tokens for c in beam] == [c.tokens for c in greedy]
    assert [c.ended for c in beam] == [c.ended for c in greedy]
    assert [c.score for c in beam] == pytest.approx([c.score for c in greedy], abs=1e-5)
    assert all(torch.allclose(b.alphas, g.alphas) for b, g in zip(beam, greedy, strict=True))


def test_never_ending_decoder_returns_max_len_caption(device):
    dec, vocab = make(device)
    with torch.no_grad():
        dec.L_o.bias[vocab.end_id] = -1e9
    feats = features(2, device)
    for caption in greedy_search(dec, feats, 5, vocab=vocab) + beam_search(
        dec, feats, 3, 5, vocab=vocab, length_penalty=1.0
    ):
        assert len(caption.tokens) == 5 and not caption.ended
        assert caption.alphas.shape == (5, P)


class CountingDecoder(torch.nn.Module):
    """Says "red" for ``n`` words, then <end>: log p depends only on the words so far."""

    def __init__(self, vocab, n):
        super().__init__()
        self.vocab, self.n = vocab, n

    def init_state(self, features):
        zero = features.new_zeros(features.shape[0], 1)  # h counts the words so far
        return DecoderState(zero, zero, features, features)

    def step(self, state, prev_tokens):
        count = state.h[..., 0]
        logits = torch.full((*count.shape, len(self.vocab)), -9.0, dtype=count.dtype)
        logits[..., self.vocab.stoi["red"]] = torch.where(count < self.n, 0.0, -3.0)
        logits[..., self.vocab.end_id] = torch.where(count < self.n, -3.0, 0.0)
        alpha = torch.full((*count.shape, state.features.shape[1]), 1 / state.features.shape[1])
        return logits.log_softmax(-1), alpha, state._replace(h=state.h + 1)


@pytest.mark.parametrize("search", ["greedy", "beam"])
def test_a_caption_of_max_len_words_can_end(search):
    """max_len counts words, like Profile.max_len: the <end> after the last one still comes."""
    vocab = Vocab(["red", "blue"])
    feats = features(2, "cpu")  # CountingDecoder is a CPU toy: the rule is the search's
    run = (lambda dec: greedy_search(dec, feats, 4, vocab=vocab)) if search == "greedy" else (
        lambda dec: beam_search(dec, feats, 3, 4, vocab=vocab))
    for caption in run(CountingDecoder(vocab, 4)):
        assert caption.words == ["red"] * 4 and caption.ended
        assert caption.alphas.shape == (5, P)
    step = CountingDecoder(vocab, 5).step(CountingDecoder(vocab, 5).init_state(feats[:1]),
                                          torch.tensor([vocab.start_id]))[0][0]
    longer = CountingDecoder(vocab, 5)  # would end after 5 words: cut at 4
    captions = greedy_search(longer, feats, 4, vocab=vocab) if search == "greedy" else \
        beam_search(longer, feats, 1, 4, vocab=vocab)  # wider beams keep a finished short one
    for caption in captions:
        assert caption.words == ["red"] * 4 and not caption.ended
        assert caption.score == pytest.approx(4 * float(step[vocab.stoi["red"]]))


def test_unk_only_with_allow_unk(device):
    dec, vocab = make(device)
    with torch.no_grad():
        dec.L_o.bias[vocab.unk_id] += 20.0  # <unk> the most likely word everywhere
    feats = features(2, device)
    for allow in (False, True):
        greedy = greedy_search(dec, feats, 4, vocab=vocab, allow_unk=allow)
        beams = beam_search(dec, feats, 3, 4, vocab=vocab, allow_unk=allow, return_all=True)
        assert all((c.tokens[:1] == [vocab.unk_id]) == allow for c in greedy), allow
        assert all(any(vocab.unk_id in c.tokens for c in hyps) == allow for hyps in beams), allow


def test_beam_larger_than_vocabulary(device):
    dec, vocab = make(device, words=("x", "y"))
    feats = features(2, device)
    all_hyps = beam_search(dec, feats, 50, 3, vocab=vocab, return_all=True)
    for hyps in all_hyps:
        assert 1 <= len(hyps) <= 50
        norm = [c.score for c in hyps if c.ended]
        assert norm == sorted(norm, reverse=True)
        assert len({tuple(c.tokens) for c in hyps}) == len(hyps)  # no duplicate hypotheses


def test_forbidden_tokens_never_emitted(device):
    dec, vocab = make(device)
    with torch.no_grad():  # make <pad>, <start>, <unk> the most likely tokens
        dec.L_o.bias[[vocab.pad_id, vocab.start_id, vocab.unk_id]] += 20.0
    feats = features(3, device)
    captions = greedy_search(dec, feats, 4, vocab=vocab)
    for hyps in beam_search(dec, feats, 8, 4, vocab=vocab, return_all=True):
        captions += hyps
    forbidden = {vocab.pad_id, vocab.start_id, vocab.unk_id, vocab.end_id}
    assert all(not forbidden & set(c.tokens) for c in captions)


def test_mode_restored_and_dropout_off(device):
    dec, vocab = make(device)
    dec.train()
    feats = features(2, device)
    first = beam_search(dec, feats, 2, 5, vocab=vocab)
    assert dec.training
    again = beam_search(dec, feats, 2, 5, vocab=vocab)
    assert [c.tokens for c in first] == [c.tokens for c in again]


def test_bad_arguments_say_what_to_do(device):
    dec, vocab = make(device)
    with pytest.raises(ValueError, match="unsqueeze"):
        greedy_search(dec, features(1, device)[0], 4, vocab=vocab)
    with pytest.raises(ValueError, match="beam_size"):
        beam_search(dec, features(1, device), 0, 4, vocab=vocab)
    with pytest.raises(ValueError, match="max_len"):
        beam_search(dec, features(1, device), 2, 0, vocab=vocab)
