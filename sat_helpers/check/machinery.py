"""What every exercise check shares: calling the learner's function with the package's own
version blocked, turning what goes wrong into a message the learner can act on, the
student edition's "not written yet", and the two levels of hints.

A check is a function ``body(answer) -> cases`` wrapped by :func:`exercise`. ``answer(*args)``
calls the learner's function while the functions the exercise asks to write (and the ones
they are built from) raise a marker instead of running; a call to one of them, its own
exceptions and a stub's ``NotImplementedError`` each end the check with a message.
Under nbgrader (``NBGRADER_EXECUTION`` set) every failure, an unsolved exercise included,
raises, so that the graded cell scores 0; outside it an unsolved exercise prints a line and
the notebook goes on with the package's version of the function.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import itertools
import linecache
import os
import traceback
from collections.abc import Callable, Iterable, Iterator
from types import CodeType, FunctionType

import torch
from torch import Tensor

_HINTS: dict[str, str] = {}  # exercise -> its code-level hint
_LAST_HINT: dict[str, str] = {}  # exercise -> the code-level hint of its last failure
_CALLED: list[str] = []  # blocked functions called since the answer started


class ExerciseError(AssertionError):
    """A wrong (or, under nbgrader, unwritten) answer: what is wrong, on which input, what to do."""

    def __init__(self, message: str, code_hint: str | None = None):
        super().__init__(message)
        self.code_hint = code_hint

    def _render_traceback_(self) -> list[str]:
        """IPython shows this instead of a traceback: the message is all a learner needs."""
        return [f"{type(self).__name__}: {line}" if i == 0 else line
                for i, line in enumerate(str(self).splitlines())]


class NotWritten(Exception):
    """The learner's function still raises NotImplementedError (the student edition's stub)."""


class _UsedThePackage(BaseException):
    """Raised by a blocked package function; a BaseException, so `except Exception` misses it."""


def grading() -> bool:
    """Whether nbgrader runs the notebook (autograde or validate): then every failure raises."""
    return bool(os.environ.get("NBGRADER_EXECUTION"))


def fail(exercise: str, what: str, concept: str, code: str | None = None) -> None:
    """Raise the wrong-answer error: what is wrong, the concept to revisit; code on request."""
    raise ExerciseError(f"{exercise}: {what}\nHint: {concept}\n"
                        f"(check.hint({exercise!r}) shows a code-level hint.)", code)


def hint(exercise: str) -> None:
    """Print the code-level hint of an exercise (of its last mistake, when the check named one)."""
    if exercise not in _HINTS:
        raise ValueError(f"no exercise {exercise!r}; the exercises are {', '.join(sorted(_HINTS))}")
    print(_LAST_HINT.get(exercise) or _HINTS[exercise])


# ------------------------------------------------------------ blocking the package's functions

def _blocked_call(name: str) -> _UsedThePackage:
    _CALLED.append(name)
    return _UsedThePackage(name)


def display_name(function: Callable) -> str:
    return f"{function.__module__}.{function.__qualname__}"


@functools.cache
def _raiser(function: FunctionType) -> CodeType:
    """Code for ``function`` that raises the marker; the same free variables, so it fits."""
    free = function.__code__.co_freevars
    lines = ["def _outer():", *(f"    {v} = None" for v in free),
             "    def _blocked(*args, **kwargs):"]
    if free:
        lines.append(f"        ({', '.join(free)},)")
    lines += [f"        raise __import__({__name__!r}, fromlist=['_'])._blocked_call("
              f"{display_name(function)!r})", "    return _blocked"]
    namespace: dict = {}
    exec("\n".join(lines), namespace)  # noqa: S102 (a fixed template, no learner input)
    return namespace["_outer"]().__code__


def _function(obj: Callable) -> FunctionType:
    """The plain function behind a function, method or classmethod."""
    return getattr(obj, "__func__", obj)


@contextlib.contextmanager
def blocked(functions: Iterable[Callable]) -> Iterator[None]:
    """Every alias of these functions raises the marker (their code is swapped, then restored)."""
    saved = [(f, f.__code__) for f in map(_function, functions)]
    _CALLED.clear()
    try:
        for f, _ in saved:
            f.__code__ = _raiser(f)
        yield
    finally:
        for f, code in saved:
            f.__code__ = code


# ------------------------------------------------------------ calling the learner's function

_EXCEPTION_HINTS = {
    KeyError: "a lookup of a key the dict does not hold (an unknown word? `d.get(key, default)`)",
    IndexError: "an index past the end of a list or tensor: compare it with the length there",
    TypeError: "a value of another type than that line expects: the task lists what each "
               "argument is",
    AttributeError: "an attribute that object does not have: the task names the ones to use",
    ValueError: "a value that line cannot take: read the message",
}


def _where(error: BaseException, fn: Callable) -> str:
    """' at line N of your code: `...`' for the last frame in the learner's cell, if any."""
    filename = getattr(getattr(fn, "__code__", None), "co_filename", None)
    frames = [f for f in traceback.extract_tb(error.__traceback__) if f.filename == filename]
    if not frames:
        return ""
    line = linecache.getline(frames[-1].filename, frames[-1].lineno).strip()
    return f", at line {frames[-1].lineno} of your cell: `{line}`"


def _crash(exercise: str, error: Exception, inputs: str, fn: Callable) -> ExerciseError:
    kind = type(error).__name__
    what = f"the key {error.args[0]!r} is not there" if isinstance(error, KeyError) and \
        error.args else str(error)
    concept = next((h for t, h in _EXCEPTION_HINTS.items() if isinstance(error, t)),
                   "read the message: it says what went wrong on that line")
    if isinstance(error, RuntimeError) and any(w in str(error) for w in ("size", "shape")):
        concept = "two tensors' shapes do not fit there: print the shapes on that line"
    return ExerciseError(f"{exercise}: your function raised {kind} ({what}){_where(error, fn)}, "
                         f"on {inputs or 'the check input'}.\nHint: {concept}.")


def _owner(name: str) -> str:
    """Whose implementation a blocked function is: the package's, or a library's (nltk's)."""
    top = name.split(".")[0]
    return "the package's own version" if top == "sat_helpers" else f"{top}'s implementation"


def _signature(stand_in: Callable) -> str:
    """The documented parameters, 'a, h, W_a, ...', read from the package's stand-in."""
    return ", ".join(inspect.signature(stand_in).parameters)


class Answer:
    """The learner's function as a check calls it: the package blocked, errors explained."""

    def __init__(self, exercise: str, fn: Callable, blocked_functions: tuple[Callable, ...],
                 write_from: str, stand_in: Callable):
        self.exercise, self.fn, self.blocked = exercise, fn, blocked_functions
        self.write_from, self.stand_in = write_from, stand_in

    def __call__(self, *args, inputs: str = ""):
        """fn(*args); its arguments must fit the documented signature, and it must return."""
        __tracebackhide__ = True
        self._fits(len(args))
        result = self.run(self.fn, *args, inputs=inputs)
        if result is None:
            raise ExerciseError(
                f"{self.exercise}: your function returned None: did you forget `return`?\n"
                "Hint: a function without a `return` line gives None; end it with `return` "
                "and the result the task asks for.") from None
        return result

    def _fits(self, count: int) -> None:
        """A TypeError of the call itself (a wrong signature) says the signature to write."""
        try:
            inspect.signature(self.fn).bind(*range(count))
        except TypeError as error:
            name = getattr(self.fn, "__name__", "")
            name = name if name.isidentifier() else self.exercise
            expected = f"def {name}({_signature(self.stand_in)})"
            raise ExerciseError(
                f"{self.exercise}: your function cannot be called with the task's {count} "
                f"argument{'s' * (count != 1)} ({error}).\nHint: the check calls it as the task "
                f"documents: `{expected}`.") from None
        except ValueError:  # no signature to read (a builtin): the call itself will tell
            return

    def run(self, function: Callable, *args, inputs: str = ""):
        """function(*args) under the same rules (e.g. a module the learner's function built)."""
        __tracebackhide__ = True
        try:
            with blocked(self.blocked):
                result = function(*args)
                called = list(_CALLED)
        except _UsedThePackage as used:
            called = [str(used.args[0])]
        except NotImplementedError:
            raise NotWritten(self.exercise) from None
        except ExerciseError:
            raise
        except Exception as error:  # the learner's own bug: say what and where
            raise _crash(self.exercise, error, inputs, self.fn) from None
        if called:
            raise ExerciseError(
                f"{self.exercise}: your function called {called[0]}, {_owner(called[0])} of "
                "what this exercise asks for (or a piece of it). Write it from "
                f"{self.write_from}.\nHint: that function is blocked while the check runs "
                "yours; the task lists what you may use.") from None
        return result


# ------------------------------------------------------------ one exercise's check

def _adopt(fn: Callable, stand_in: Callable) -> bool:
    """Rebind the learner's global name to the package's stand-in, so later cells run."""
    namespace = getattr(fn, "__globals__", None)
    name = getattr(fn, "__name__", "")
    if namespace is None or namespace.get(name) is not fn:
        return False
    namespace[name] = stand_in
    return True


def _not_written(exercise: str, fn: Callable, stand_in: Callable, again: bool) -> None:
    __tracebackhide__ = True
    name = getattr(fn, "__name__", "your function")
    adopted = _adopt(fn, stand_in)
    why = ("is still the package's stand-in: run your solution's cell, then this one" if again
           else "still raises NotImplementedError")
    message = f"{exercise}: not written yet ({name} {why})."
    if grading():
        raise ExerciseError(message + " It scores 0.") from None
    print(message + (f" From here on `{name}` is the package's version, so the rest of the "
                     "notebook runs; come back to it when you like." if adopted else ""))


def exercise(name: str, *, blocked: tuple[Callable, ...], stand_in: Callable,
             code_hint: str, write_from: str) -> Callable:
    """Make ``body(answer) -> number of inputs tried`` the check ``check.<name>(fn)``.

    ``stand_in`` has the documented signature; ``write_from`` ends "Write it from ..." in the
    message to a learner who called a blocked function.
    """
    _HINTS[name] = code_hint
    stand_in._sat_stand_in = True  # type: ignore[attr-defined]

    def decorate(body: Callable[[Answer], int]) -> Callable[[Callable], None]:
        @functools.wraps(body)
        def check(fn: Callable) -> None:
            __tracebackhide__ = True
            _LAST_HINT.pop(name, None)
            if getattr(fn, "_sat_stand_in", False):
                return _not_written(name, fn, stand_in, again=True)
            try:
                with torch.random.fork_rng(devices=[]):  # the notebook's random numbers stay
                    cases = body(Answer(name, fn, blocked, write_from, stand_in))
            except NotWritten:
                return _not_written(name, fn, stand_in, again=False)
            except ExerciseError as error:
                if error.code_hint:
                    _LAST_HINT[name] = error.code_hint
                raise error.with_traceback(None) from None
            tried = "the input" if cases == 1 else f"all {cases} inputs"
            print(f"✓ {name}: right on {tried} the check tried")
            return None
        return check
    return decorate


def same_tensor(exercise: str, name: str, got, want: Tensor, concept: str, inputs: str,
                atol: float = 1e-5, code: str | None = None) -> Tensor:
    """got must be a tensor of want's shape and values; the message names the wrong entries."""
    if not isinstance(got, Tensor):
        fail(exercise, f"{name} is a {type(got).__name__}, not a torch.Tensor ({inputs}).",
             "build it with torch operations on the tensors you are given.")
    if got.shape != want.shape:
        fail(exercise, f"{name} has shape {tuple(got.shape)}, expected {tuple(want.shape)} "
             f"({inputs}).", concept, code)
    close = torch.isclose(got.detach().double(), want.detach().double(), atol=atol, rtol=1e-4)
    if not bool(close.all()):
        if want.dim() == 0:
            fail(exercise, f"{name} is {float(got.detach()) + 0.0:.5g}, expected "
                 f"{float(want) + 0.0:.5g} ({inputs}).", concept, code)
        wrong = (~close).nonzero().tolist()
        first = [tuple(i) for i in wrong[:3]]
        there, expected = float(got.detach()[first[0]]), float(want.detach()[first[0]])
        fail(exercise, f"{name}: the shape is right, but {len(wrong)} of {close.numel()} "
             f"entries differ ({inputs}); first at {first}: got {there + 0.0:.5g}, expected "
             f"{expected + 0.0:.5g}.", concept, code)
    return got


def in_order(exercise: str, got: tuple, want: tuple, names: tuple[str, ...], inputs: str) -> None:
    """Fail when got holds the right values in another order: name the order to return."""
    if len(got) != len(want) or all(matches(g, w) for g, w in zip(got, want, strict=True)):
        return
    for order in itertools.permutations(range(len(want))):
        if all(matches(got[i], want[j]) for i, j in enumerate(order)):
            fail(exercise, f"the outputs are in another order: return ({', '.join(names)}) "
                 f"({inputs}).", f"you returned ({', '.join(names[j] for j in order)}); the "
                 "values are right, only their places differ.")


def matches(got, want: Tensor, atol: float = 1e-5) -> bool:
    """Whether got is a tensor equal to want (to match a wrong answer against a known mistake)."""
    return (isinstance(got, Tensor) and got.shape == want.shape
            and bool(torch.allclose(got.detach().double(), want.detach().double(), atol=atol)))
