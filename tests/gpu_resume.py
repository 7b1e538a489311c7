"""Under torchrun on the GPUs: a run cut after epoch 1 and resumed equals an uninterrupted one.

Part of ``make gpu-check`` (tests/gpu_check.sh runs it three times under torchrun):

    torchrun --nproc_per_node N tests/gpu_resume.py OUT whole   # 3 epochs straight through
    torchrun --nproc_per_node N tests/gpu_resume.py OUT cut     # stopped on every rank after 1
    torchrun --nproc_per_node N tests/gpu_resume.py OUT resume  # continues the cut run
    python tests/gpu_resume.py OUT compare                      # exit 1 unless equal

The profile is quick with ``deterministic=True``, so on CUDA the resumed weights must equal
the uninterrupted ones bit for bit (sat_helpers.train explains why that needs the flag).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from sat_helpers import train as tr
from sat_helpers.config import get_profile

PROFILE = get_profile("quick", epochs=3, deterministic=True)


class PowerCut(Exception):
    """Raised on every rank once epoch 1's checkpoint is written."""


def cut_after_first_epoch() -> None:
    """Make every rank stop after epoch 1, as a crash under torchrun stops them all."""
    real = tr.Trainer.end_epoch

    def end_epoch(self, *args):
        improved = real(self, *args)
        if self.epoch == 1:
            raise PowerCut
        return improved

    tr.Trainer.end_epoch = end_epoch


def main(out: Path, what: str) -> int:
    if what == "compare":
        whole, resumed = (torch.load(out / d / "last.pt", weights_only=True) for d in
                          ("whole", "cut"))
        differ = [k for k, v in whole["model"].items() if not torch.equal(v, resumed["model"][k])]
        epochs = [r["epoch"] for r in resumed["log"]]
        print(f"resumed run: epochs {epochs}; weights that differ from the uninterrupted run: "
              f"{differ or 'none'}")
        return 0 if not differ and epochs == [1, 2, 3] else 1
    if what == "cut":
        cut_after_first_epoch()
    try:
        tr.train(PROFILE, out_dir=out / ("whole" if what == "whole" else "cut"),
                 resume=what == "resume")
    except PowerCut:
        print("cut after epoch 1")
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), sys.argv[2]))
