"""Training hard (stochastic) attention: the paper's objective and its gradient (Sec. 4.1).

Hard attention treats the location s_t looked at before word t as a latent variable,
s_t ~ Multinoulli(α_t). The model maximises a variational lower bound on log p(y | a)
(paper eq. 10, by Jensen's inequality):

    L_s = Σ_s p(s | a) log p(y | s, a)  ≤  log Σ_s p(s | a) p(y | s, a) = log p(y | a),

whose gradient (eq. 11) is estimated by Monte Carlo with sampled locations s̃ ~ p(s | a)
(eq. 12, with the three variance-reduction devices of the paper):

    ∂L_s/∂W ≈ ∂log p(y | s̃, a)/∂W + λ_r (log p(y | s̃, a) − b) ∂log p(s̃ | a)/∂W + λ_e ∂H[s̃]/∂W

(λ_r is ``profile.reinforce_weight``, λ_e ``profile.entropy_weight``: the paper leaves
both to tuning and reports no values. The package's defaults, λ_r = 1 and λ_e = 0.01, are
its own choice. ``profile.reinforce_reward`` picks the reward (``sat_helpers.losses.REWARDS``):
``"caption_sum"`` is eq. 12 as printed, a whole caption's log-likelihood; ``"authors"`` is
the rule of the authors' code (arctic-captions, capgen.py), the caption's per-word mean
log-likelihood divided by 10, with the baseline moved on every minibatch. The package's λ_r
is eq. 12's λ_r under either reward: λ_r = 1 with ``"authors"`` is the authors' learning
rule, and the authors' entropy weight 0.002 is λ_e = 0.002 × batch size here
(``losses.authors_entropy_weight``). With the summed reward at λ_r = 1 the REINFORCE term's
noise, which grows with caption length, can dominate what the attention learns; the
``shapes`` profile's values are measured over seeds by ``benchmarks/hard_seeds.py``.)

1. b, a moving average of the reward, b ← decay·b + (1 − decay)·mean reward (decay
   ``profile.baseline_decay`` = 0.9): subtracting it leaves the mean unchanged and lowers the
   variance of the REINFORCE term. b starts at 0, as in the authors' code: on Shapes that
   beat starting at the first sampled minibatch's mean (an alternative some
   reimplementations use) on every seed measured (``benchmarks/baseline_start.py``);
2. the entropy bonus λ_e H[s̃] (``profile.entropy_weight``);
3. with probability 0.5 (``profile.expected_context_p``) a minibatch uses the expected context
   Σ_i α_i a_i instead of a sample (the paper's "set the sampled attention location s̃ to
   its expected value α"): that minibatch trains like soft attention.

:class:`sat_helpers.losses.HardAttentionLoss` is that objective as a loss for
``sat_helpers.train`` (which uses it for ``attention="hard"``); it keeps b and the minibatch
counter as plain data, so a checkpoint holds them and a resumed run continues exactly. This
module names the pieces of the estimator where the notebooks import them.

At inference a hard-attention decoder in eval mode uses the expected context, as the paper's
reference code (arctic-captions) does when it generates test captions: its sampler is built
with ``sampling=False``, where stochastic attention weights the annotations by α itself.
Greedy and beam search therefore run on a hard model unchanged.
"""

from __future__ import annotations

from .attention import attention_entropy  # noqa: F401 - the pieces, importable from here
from .losses import HardAttentionLoss, reinforce_surrogate, token_log_likelihood  # noqa: F401
