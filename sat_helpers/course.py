"""Run the whole course: every notebook in order, executed copies, a table and the results."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd
from traitlets.config import Config

from .config import get_profile, results_path


def kernel_config() -> Config:
    """Kernel manager settings: CurveZMQ keys for the kernel's sockets where jupyter_client can.

    Without keys, ipykernel 7 warns "Kernel is running over TCP without encryption" for every
    kernel; jupyter_client (8.10 on) provisions them only when told to.
    """
    import zmq
    from jupyter_client.manager import KernelManager

    config = Config()
    if "transport_encryption" in KernelManager.class_trait_names() and zmq.has("curve"):
        config.KernelManager.transport_encryption = "auto"
    return config


def warnings_in(outputs: Sequence[Mapping]) -> list[str]:
    """The stderr outputs of one cell that hold a warning: an executed notebook should have none."""
    return [out.get("text", "") for out in outputs
            if out.get("output_type") == "stream" and out.get("name") == "stderr"
            and re.search(r"warning", out.get("text", ""), re.I)]


def run_notebook(path: Path, out_dir: Path,
                 timeout: int = 1800) -> tuple[str, float, str, list[str]]:
    """Execute one notebook into out_dir; return (status, minutes, error summary, warnings)."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    status, error = "ok", ""
    try:
        NotebookClient(nb, timeout=timeout, kernel_name="python3", config=kernel_config(),
                       resources={"metadata": {"path": str(path.parent)}}).execute()
    except CellExecutionError as exc:
        status, error = "FAILED", str(exc).strip().splitlines()[-1][:200]
    minutes = (time.perf_counter() - start) / 60
    nbformat.write(nb, out_dir / path.name)
    warned = [text for cell in nb.cells if cell.cell_type == "code"
              for text in warnings_in(cell.get("outputs", []))]
    return status, minutes, error, warned


def git_commit(folder: Path) -> str | None:
    """The commit checked out where `folder` lives ("+" after it when tracked files differ from
    it), for the book's footer; None outside a git checkout."""
    try:
        head = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], check=True,
                              capture_output=True, text=True).stdout.strip()
        changed = subprocess.run(["git", "-C", str(folder), "status", "--porcelain",
                                  "--untracked-files=no"], check=True, capture_output=True,
                                 text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+" if changed else "")


def run_course(notebooks: Path, out_dir: Path, profile_name: str | None = None) -> bool:
    """Run every notebook of `notebooks` in order; print and save a table; True if all ran."""
    profile = get_profile(profile_name)
    os.environ["SAT_PROFILE"] = profile.name  # the notebooks' kernels inherit it
    paths = sorted(notebooks.glob("[0-9][0-9]_*.ipynb"))
    if not paths:
        raise FileNotFoundError(f"No numbered notebooks (NN_name.ipynb) in {notebooks}")
    out_nb = out_dir / "notebooks"
    out_nb.mkdir(parents=True, exist_ok=True)
    rows = []
    for path in paths:
        print(f"running {path.name} on profile {profile.name!r} ...", flush=True)
        status, minutes, error, warned = run_notebook(path, out_nb)
        rows.append({"notebook": path.name, "status": status, "minutes": round(minutes, 2),
                     "warnings": len(warned), "error": error})
        for text in warned:
            print(f"  {path.name} printed a warning: {text.strip()[:300]}", flush=True)
    table = pd.DataFrame(rows)
    results_file = results_path(profile)
    headline = json.loads(results_file.read_text()) if results_file.exists() else {}
    summary = {
        "profile": profile.name,
        "total_minutes": round(float(table["minutes"].sum()), 2),
        "commit": git_commit(notebooks),
        "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "notebooks": rows,
        "results": headline,
    }
    (out_dir / "course-results.json").write_text(json.dumps(summary, indent=2))
    print(table.to_string(index=False))
    print(f"total: {summary['total_minutes']} min")
    for section, values in headline.items():
        print(f"{section}: " + ", ".join(f"{k}={_fmt(v)}" for k, v in values.items()))
    print(f"wrote {out_dir / 'course-results.json'} and executed notebooks to {out_nb}")
    return bool((table["status"] == "ok").all())


def _fmt(value) -> str:
    """Short printing of a headline number."""
    return f"{value:.3f}" if isinstance(value, float) else str(value)
