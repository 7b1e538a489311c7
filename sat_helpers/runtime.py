"""Where and how a run computes: the device, DDP's process group, autocast, determinism, RNGs,
and how freed CPU memory is kept.

The same training code runs in one process or under ``torchrun --nproc_per_node N`` (one
machine or several): :func:`distributed` joins the process group (gloo on the CPU,
``cpu:gloo,cuda:nccl`` on CUDA, so a reduction works on whichever device its tensor lives).
Precision (``profile.amp``): float32 on the CPU; on CUDA, bfloat16 autocast where the GPU has
it (Ampere and later; no loss scaling needed), else float16 autocast with a GradScaler.
"""

from __future__ import annotations

import ctypes
import os
import platform
import random

import numpy as np
import torch
import torch.distributed as dist

AMP_MODES = ("auto", "bf16", "fp16", "off")
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


def default_device() -> str:
    """"cuda" when a GPU is there, else "cpu"."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def distributed(device: torch.device) -> tuple[int, int, torch.device]:
    """(rank, world size, this process's device): joins torchrun's group when WORLD_SIZE > 1.

    On CUDA the group has both backends, NCCL for CUDA tensors and gloo for CPU ones (and for
    the pickled objects of ``all_gather_object``), so no reduction meets a backend that cannot
    hold its tensor; each process takes the GPU of its LOCAL_RANK.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = device.type == "cuda"
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("cpu:gloo,cuda:nccl" if cuda else "gloo")
    if not dist.is_initialized():
        return 0, 1, device
    if dist.get_world_size() > 1 and cuda:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    return dist.get_rank(), dist.get_world_size(), device


def autocast_dtype(profile, device: torch.device) -> torch.dtype | None:
    """The autocast dtype ``profile.amp`` asks for on ``device``; None means float32.

    "auto": bfloat16 on a CUDA GPU that has it natively (compute capability 8.0 and later,
    Ampere), else float16 on CUDA; float32 on the CPU.
    "bf16" and "fp16" force one ("bf16" also runs on the CPU; "fp16" needs CUDA); "off": float32.
    """
    if profile.amp not in AMP_MODES:
        raise ValueError(f"amp={profile.amp!r}: use one of {', '.join(AMP_MODES)}.")
    cuda = device.type == "cuda"
    if profile.amp == "off" or (profile.amp == "auto" and not cuda):
        return None
    if profile.amp == "fp16" and not cuda:
        raise ValueError("amp='fp16' needs a CUDA device; on the CPU use 'bf16' or 'off'.")
    # not the emulated bf16 of older GPUs (a T4 says True with emulation, and is slow at it)
    native_bf16 = cuda and torch.cuda.is_bf16_supported(including_emulation=False)
    if profile.amp == "bf16" or (profile.amp == "auto" and native_bf16):
        return torch.bfloat16
    return torch.float16


def keep_freed_memory(block_mb: int = 32, keep_mb: int = 256) -> bool:
    """Let glibc reuse freed blocks of up to ``block_mb`` MB instead of giving them back to the OS.

    A CPU training step allocates and frees tensors of a few MB. By default glibc maps each
    one fresh and unmaps it when freed, so every allocation page-faults its memory back in:
    tens of thousands of faults in one Shapes step, about a third of its time (docs/speed.md).
    Kept on the heap (up to ``keep_mb`` MB free before trimming), they are reused. Returns
    whether it applied: glibc only (Linux); elsewhere the allocator stays as it is.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL("libc.so.6")
    return bool(libc.mallopt(M_MMAP_THRESHOLD, block_mb << 20)
                and libc.mallopt(M_TRIM_THRESHOLD, keep_mb << 20))


def use_deterministic() -> None:
    """Deterministic kernels everywhere (process-wide), and cuBLAS's fixed workspace for them.

    CUBLAS_WORKSPACE_CONFIG only counts when set before the process's first CUDA matrix
    product, hence first thing in Trainer; in a session that already used the GPU (a notebook),
    set it in the environment before starting it.
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Python, NumPy, torch (and CUDA) RNG states as tensors and plain data."""
    np_state = np.random.get_state(legacy=False)
    return {
        "python": random.getstate(),
        "numpy": {"key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                  "pos": np_state["state"]["pos"], "has_gauss": np_state["has_gauss"],
                  "gauss": np_state["gauss"]},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` saved."""
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state({"bit_generator": "MT19937",
                         "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
                         "has_gauss": n["has_gauss"], "gauss": n["gauss"]})
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available() and state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])


def all_ranks_rng_state(world: int) -> list[dict]:
    """Every process's RNG state, in rank order (a collective call under DDP)."""
    if world == 1:
        return [rng_state()]
    states = [None] * world
    dist.all_gather_object(states, rng_state())
    return states
