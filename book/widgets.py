"""Widgets as static HTML: a page cannot run the kernel a widget talks to.

An executed notebook keeps each widget's last state in its metadata. Progress bars become a
native <progress> with their text; the explorer's picture and caption are shown as the run left
them, its controls drawn disabled, under a note that says to run the notebook to use it.
"""

from __future__ import annotations

from collections.abc import Mapping
from html import escape

VIEW = "application/vnd.jupyter.widget-view+json"
STATE = "application/vnd.jupyter.widget-state+json"
CONTROLS = ("Dropdown", "IntSlider", "FloatSlider", "FileUpload", "Button", "Checkbox",
            "Text", "ToggleButtons", "RadioButtons", "Play")
RUN_IT = ("<p class='sat-widget-note'><b>Interactive explorer.</b> This is its first view, as "
          "the run left it. Open the notebook in Colab (links at the top of the page) or "
          "locally (<code>make lab</code>) and run it to move the sliders, pick other images "
          "or upload your own.</p>")


def widget_models(nb: Mapping) -> dict[str, dict]:
    """model id -> {"name", "state", "buffers"} from an executed notebook's widget metadata."""
    state = nb.get("metadata", {}).get("widgets", {}).get(STATE, {}).get("state", {})
    return {mid: {"name": m["model_name"].removesuffix("Model"), "state": m["state"],
                  "buffers": m.get("buffers", [])} for mid, m in state.items()}


def _child_ids(state: Mapping) -> list[str]:
    return [c.removeprefix("IPY_MODEL_") for c in state.get("children", [])]


def _label(state: Mapping) -> str:
    text = state.get("description", "")
    return f"<span class='sat-widget-label'>{escape(text)}</span> " if text else ""


def _image(model: Mapping) -> str:
    data = next((b["data"] for b in model["buffers"] if b["path"] == ["value"]), "")
    width = model["state"].get("width") or ""
    size = f" width='{escape(str(width))}'" if width else ""
    fmt = escape(model["state"].get("format", "png"))
    return f"<img class='sat-widget-image' src='data:image/{fmt};base64,{data}'{size} alt=''>"


def _control(name: str, state: Mapping) -> str:
    """A control drawn as it stood, disabled: the page has no kernel to answer it."""
    if name.endswith("Slider"):
        return (f"{_label(state)}<input type='range' disabled min='{state.get('min', 0)}' "
                f"max='{state.get('max', 100)}' value='{state.get('value', 0)}'> "
                f"{escape(str(state.get('value', '')))}")
    if name == "Dropdown":
        labels = state.get("_options_labels", [])
        index = state.get("index") or 0
        chosen = labels[index] if 0 <= index < len(labels) else ""
        return f"{_label(state)}<select disabled><option>{escape(chosen)}</option></select>"
    return f"<button disabled>{escape(state.get('description', name))}</button>"


def render(models: Mapping[str, dict], mid: str) -> str:
    """The HTML of one widget and its children as their saved state shows them."""
    model = models.get(mid)
    if model is None:
        return ""
    name, state = model["name"], model["state"]
    if name in ("VBox", "HBox", "Box", "GridBox"):
        direction = "row" if name == "HBox" else "column"
        inner = "".join(f"<div>{render(models, c)}</div>" for c in _child_ids(state))
        return (f"<div class='sat-widget-box' style='display:flex;flex-direction:{direction};"
                f"gap:0.5em;align-items:flex-start'>{inner}</div>")
    if name in ("HTML", "HTMLMath"):
        return state.get("value", "")
    if name == "Label":
        return escape(state.get("value", ""))
    if name in ("FloatProgress", "IntProgress"):
        return f"<progress value='{state.get('value', 0)}' max='{state.get('max', 1)}'></progress>"
    if name == "Image":
        return _image(model)
    if name in CONTROLS:
        return _control(name, state)
    return ""


def is_interactive(models: Mapping[str, dict], mid: str) -> bool:
    """True when the widget or one of its children is a control a learner would use."""
    model = models.get(mid)
    if model is None:
        return False
    return model["name"] in CONTROLS or any(is_interactive(models, c)
                                            for c in _child_ids(model["state"]))


def static_output(output: dict, models: Mapping[str, dict]) -> dict | None:
    """The output with its widget replaced by static HTML; None when the widget is gone."""
    mid = output["data"][VIEW]["model_id"]
    html = render(models, mid)
    if not html:
        return None
    if is_interactive(models, mid):
        html = RUN_IT + html
    return {**output, "data": {"text/html": f"<div class='sat-widget'>{html}</div>",
                               "text/plain": output["data"].get("text/plain", "")}}
