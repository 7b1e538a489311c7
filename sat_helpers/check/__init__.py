"""Checks for the notebooks' exercises: ``check.<name>(your_function)``.

Each check calls the learner's function on several small inputs (edge cases included) and
compares what it returns with the package's own version, which is blocked while the
learner's function runs: calling it is reported, not rewarded. Right: one line with ✓.
Wrong: an :class:`ExerciseError` naming the mistake and the concept to revisit;
``check.hint(name)`` then prints a code-level hint. Not written yet (the student edition's
stub): a line saying so, and the notebook goes on with the package's version; under
nbgrader's autograde that raises too, so the exercise scores 0. One module per notebook.
"""

from .attention import attention, attention_step, penalty
from .dataset import encode, vocabulary
from .decoder import decoder_step, loss
from .encoder import cut_classifier, to_annotations
from .evaluation import brevity_penalty, clipped_precision, hit
from .hard import entropy, reinforce_gradient, surrogate
from .machinery import ExerciseError, hint
from .search import beam_step, best_caption, greedy_search, reorder

__all__ = ["ExerciseError", "attention", "attention_step", "beam_step", "best_caption",
           "brevity_penalty", "clipped_precision", "cut_classifier", "decoder_step", "encode",
           "entropy", "greedy_search", "hint", "hit", "loss", "penalty", "reinforce_gradient",
           "reorder", "surrogate", "to_annotations", "vocabulary"]
