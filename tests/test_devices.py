"""Tensors are made on the device of the tensors they meet, so the course runs on CUDA too.

This machine may have no GPU, so two checks that need none:
- a static one: every tensor factory (torch.zeros, torch.tensor, ...) in the package passes
  ``device=``, or is on the list below with the reason it may make a CPU tensor; in a
  notebook, every factory in a statement that uses a name bound where something is placed
  on ``device`` (``.to(device)``, ``device=device``) passes ``device=``;
- a dynamic one: the decoder's forward, backward and step run on the ``meta`` device,
  which raises the moment a CPU tensor meets a meta one.
"""

import ast
import json
from pathlib import Path

import pytest
import torch

from sat_helpers import fastcpu
from sat_helpers.attention import doubly_stochastic_penalty
from sat_helpers.decoder import AttentionDecoder

ROOT = Path(__file__).resolve().parent.parent
FACTORIES = {"tensor", "zeros", "ones", "full", "empty", "arange", "rand", "randn", "randint",
             "eye", "linspace"}
# Package functions that may make CPU tensors, and why.
CPU_BY_DESIGN = {
    "data.caption_collate": "a DataLoader batch: made on the CPU, the trainer moves it",
    "fastcpu.onednn_works": "probes oneDNN, a CPU library",
    "decoder.AttentionDecoder.forward": "row/column indices from Python ints, moved at once",
    "losses.HardAttentionLoss.before_batch": "a coin from a CPU generator, read as a bool",
    "search.greedy_search": "n_emitted: CPU bookkeeping, indexed with CPU indices",
    "training_data.epoch_captions": "a DataLoader's sample indices: CPU by nature",
}
CPU_MODULES = {
    "check": "the exercises' checks make small CPU inputs for the learner's function and the "
             "package's alike; nothing of theirs meets a model on another device",
}


def factory_calls_without_device(tree: ast.AST) -> list[ast.Call]:
    """Calls torch.<factory>(...) that give no device= keyword."""
    return [node for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch"
            and node.func.attr in FACTORIES
            and not any(k.arg == "device" for k in node.keywords)]


def _child_scopes(node: ast.AST):
    """The classes and functions directly inside node (not those nested in them)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            yield child
        else:
            yield from _child_scopes(child)


def package_offenders() -> list[str]:
    """'module.Class.function line N' of factories without device= outside CPU_BY_DESIGN."""
    owner = {}  # call -> the innermost function or class around it

    def visit(node, name):
        for call in factory_calls_without_device(node):
            owner[call] = name  # inner scopes are visited later and overwrite
        for child in _child_scopes(node):
            visit(child, f"{name}.{child.name}")

    for path in sorted((ROOT / "sat_helpers").glob("*.py")):
        if path.stem in CPU_MODULES:
            continue
        visit(ast.parse(path.read_text(encoding="utf-8")), path.stem)
    return sorted(f"{name} line {call.lineno}" for call, name in owner.items()
                  if name not in CPU_BY_DESIGN)


def test_package_makes_tensors_on_the_device_they_meet():
    assert package_offenders() == [], (
        "pass device= (the device of the tensors the new one meets), or add the function to "
        "CPU_BY_DESIGN with the reason a CPU tensor is right there")


def _code(cell) -> str:
    """A code cell's Python, each IPython magic (% or !) replaced by ``pass``."""
    lines = cell["source"] if isinstance(cell["source"], list) else cell["source"].splitlines(True)
    return "".join(line[:len(line) - len(line.lstrip())] + "pass\n"
                   if line.lstrip().startswith(("%", "!")) else line for line in lines)


def _is_placement(node: ast.AST) -> bool:
    """x.to(device), x.cuda(), or f(..., device=device) other than ensure_features (a folder)."""
    if not isinstance(node, ast.Call):
        return False
    name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
    if name == "ensure_features":
        return False
    if name == "cuda" or (name == "to" and any(isinstance(a, ast.Name) and a.id == "device"
                                               for a in node.args)):
        return True
    return any(k.arg == "device" and isinstance(k.value, ast.Name) and k.value.id == "device"
               for k in node.keywords)


def _stored(stmt: ast.stmt) -> set[str]:
    """Names a statement binds: targets, loop variables, defs, and the containers it fills."""
    names = set()
    for node in ast.walk(stmt):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Store):
            base = node.value
            if isinstance(base, ast.Name):
                names.add(base.id)
        elif isinstance(node, ast.FunctionDef | ast.ClassDef):
            names.add(node.name)
    return names


def notebook_offenders(path: Path) -> list[str]:
    """'cell N line L: source' of factories without device= next to device-placed values."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    statements = []  # (cell index, statement)
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "code":
            statements += [(i, stmt) for stmt in ast.parse(_code(cell)).body]
    on_device = set()  # names bound by a statement that places something on `device`
    for _, stmt in statements:
        if any(_is_placement(n) for n in ast.walk(stmt)):
            on_device |= _stored(stmt) - {"device", "_"}
    found = []
    for i, stmt in statements:
        used = {n.id for n in ast.walk(stmt) if isinstance(n, ast.Name)}
        if used & on_device:
            found += [f"cell {i} line {call.lineno}: {ast.unparse(call)}"
                      for call in factory_calls_without_device(stmt)]
    return found


@pytest.mark.parametrize("path", sorted((ROOT / "notebooks").glob("*.ipynb")),
                         ids=lambda p: p.name)
def test_notebook_makes_tensors_on_the_device_they_meet(path):
    assert notebook_offenders(path) == [], (
        "these tensors meet a model or features on `device` (cuda on Colab) but are made on "
        "the CPU: pass device= (e.g. device=features.device)")


def test_the_static_check_sees_a_cpu_tensor_next_to_a_device_model(tmp_path):
    cells = ["decoder = build().to(device)\n",
             "log_p = decoder.step(state, torch.tensor([1]))\n",
             "toy = torch.zeros(3)\n"]
    nb = {"cells": [{"cell_type": "code", "source": [c]} for c in cells]}
    (tmp_path / "nb.ipynb").write_text(json.dumps(nb))
    assert notebook_offenders(tmp_path / "nb.ipynb") == ["cell 1 line 1: torch.tensor([1])"]


def test_decoder_runs_on_the_meta_device():
    # A tensor made on the CPU inside forward, backward or step would meet meta tensors and
    # raise. (The loss picks the real tokens with a boolean mask, which meta cannot size.)
    meta = torch.device("meta")
    decoder = AttentionDecoder(20, 8, 6, 7, 5, dropout=0.0).to(meta)
    features = torch.randn(3, 4, 8, device=meta)
    captions = torch.randint(4, 20, (3, 5), device=meta)
    lengths = torch.tensor([5, 4, 3])  # lengths stay on the CPU, as the collate makes them
    out = decoder(features, captions, lengths)
    (out.scores.sum() + doubly_stochastic_penalty(out.alphas, lengths - 1)).backward()
    assert out.scores.shape == (3, 4, 20) and decoder.L_o.weight.grad.device == meta
    with torch.no_grad():
        state = decoder.init_state(features).expand(2)
        log_probs, alpha, _ = decoder.step(state, captions[:, :2])
    assert log_probs.shape == (3, 2, 20) and alpha.device == meta


def test_cpu_speed_paths_only_on_the_cpu(monkeypatch):
    # sat_helpers.fastcpu (packed weights, a Python loop of score blocks) must not run elsewhere
    def refuse(*args):
        raise AssertionError("fastcpu.step ran off the CPU")

    decoder = AttentionDecoder(20, 8, 6, 7, 5, dropout=0.0).eval()
    with torch.no_grad():
        assert fastcpu.applies(decoder, decoder.init_state(torch.randn(3, 4, 8)))  # on the CPU
        monkeypatch.setattr(fastcpu, "step", refuse)
        meta = decoder.to("meta")
        state = meta.init_state(torch.randn(3, 4, 8, device="meta"))
        log_probs, alpha, _ = meta.step(state, torch.zeros(3, dtype=torch.long, device="meta"))
    assert log_probs.shape == (3, 20) and alpha.shape == (3, 4)
