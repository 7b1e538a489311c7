"""Training: the loss learns, checkpoints are plain data, resume is exact, DDP = one process."""

import os
import socket
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

from sat_helpers import train as tr
from sat_helpers.checkpoint import warm_start_path
from sat_helpers.config import get_profile
from sat_helpers.decoder import DecoderOutput
from sat_helpers.encoder import ensure_features
from sat_helpers.runtime import seed_everything

# quick Shapes at 64 px: a 4 x 4 grid of stride-16 features, an epoch in well under a second
TINY = dict(image_size=64, grid=4, epochs=3, train_minutes=60.0, batch_size=12)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A data root with the tiny profile's dataset and features, shared by the tests."""
    path = tmp_path_factory.mktemp("sat_data")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SAT_DATA", str(path))
        ensure_features(get_profile("quick", **TINY), device="cpu")
        yield path


@pytest.fixture
def tiny(root, monkeypatch):
    monkeypatch.setenv("SAT_DATA", str(root))
    return get_profile("quick", **TINY)


def model_state(path):
    return torch.load(path, weights_only=True)["model"]


def test_caption_loss_counts_only_real_tokens():
    profile = get_profile("quick", lam=0.0)
    scores = torch.randn(2, 4, 7)
    captions = torch.tensor([[1, 5, 6, 2, 0], [1, 4, 2, 0, 0]])
    lengths = torch.tensor([4, 3])
    out = DecoderOutput(scores, torch.full((2, 4, 3), 1 / 3), None, None)
    loss, parts = tr.caption_loss(out, captions, lengths, profile.lam)
    real = scores[[0, 0, 0, 1, 1], [0, 1, 2, 0, 1]]
    expected = torch.nn.functional.cross_entropy(real, torch.tensor([5, 6, 2, 4, 2]))
    assert torch.allclose(loss, expected) and parts["penalty"] == 0.0
    scores[1, 2:] = 100.0  # padding: must not matter
    assert torch.allclose(tr.caption_loss(out, captions, lengths, profile.lam)[0], expected)
    with_penalty, parts = tr.caption_loss(out, captions, lengths, lam=1.0)
    assert parts["penalty"] > 0 and torch.allclose(with_penalty, expected + parts["penalty"])


def test_train_step_fits_a_batch(tiny, tmp_path, device):
    # one batch, over and over through Trainer.train_step: it returns the batch's loss before
    # its update, and the model must fit the batch (lr 3e-3 so that 25 steps show it)
    trainer = tr.Trainer(replace(tiny, dropout=0.0, lr=3e-3), out_dir=tmp_path, device=str(device))
    features, captions, lengths = next(iter(trainer.loader))
    features, captions = features.to(device), captions.to(device)
    with torch.no_grad():
        first, _ = trainer.loss_fn(trainer.model(features, captions, lengths), captions, lengths)
    losses = [trainer.train_step(features, captions, lengths).item() for _ in range(25)]
    assert losses[0] == pytest.approx(first.item(), rel=1e-6)
    assert losses[-1] < 0.7 * losses[0], losses


def test_one_random_caption_per_image_is_seeded(tiny):
    trainer = tr.Trainer(tiny, out_dir="unused")
    sets = trainer.epoch_set
    first = sets.index.clone()
    assert len(sets) == len(trainer.train_set.meta)
    assert torch.equal(first // sets.cpi, torch.arange(len(sets)))  # one caption per image
    sets.set_epoch(1)
    assert not torch.equal(sets.index, first)
    sets.set_epoch(0)
    assert torch.equal(sets.index, first)


def test_checkpoint_is_plain_data_and_loads(tiny, tmp_path, device):
    log = tr.train(replace(tiny, epochs=2), out_dir=tmp_path, device=str(device))
    assert list(log.columns) == tr.LOG_COLUMNS and log.epoch.tolist() == [1, 2]
    ckpt = torch.load(tmp_path / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["finished"] and ckpt["profile"]["name"] == "quick"
    assert set(ckpt) >= {"model", "optimizer", "scheduler", "rng", "vocab", "config"}
    assert ckpt["vocab"] == tr.Trainer(tiny, out_dir=tmp_path).vocab.words
    decoder, vocab, _ = tr.load_checkpoint(tmp_path / "best.pt")  # on the CPU
    best = torch.load(tmp_path / "best.pt", map_location="cpu", weights_only=True)
    assert all(torch.equal(v, best["model"][k]) for k, v in decoder.state_dict().items())
    assert not decoder.training and len(vocab) == decoder.config["vocab_size"]
    assert (tmp_path / "log.csv").read_text().count("\n") == 3


@pytest.fixture
def exact(tiny, device):
    """The tiny profile, with deterministic kernels on CUDA (bit-for-bit resume needs them)."""
    yield replace(tiny, deterministic=device.type == "cuda")
    torch.use_deterministic_algorithms(False)


def test_resume_after_a_kill_is_bit_identical(exact, tmp_path, device):
    tiny, device = exact, str(device)
    tr.train(tiny, out_dir=tmp_path / "whole", device=device)

    def kill_after_first_epoch(log):
        if len(log) == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tr.train(tiny, out_dir=tmp_path / "killed", callback=kill_after_first_epoch, device=device)
    assert torch.load(tmp_path / "killed" / "last.pt", weights_only=True)["epoch"] == 1
    seen = []
    log = tr.train(tiny, out_dir=tmp_path / "killed", callback=lambda log: seen.append(len(log)),
                   device=device)
    assert seen == [2, 3] and log.epoch.tolist() == [1, 2, 3]
    whole, resumed = (torch.load(tmp_path / d / "last.pt", weights_only=True)
                      for d in ("whole", "killed"))
    for k, v in whole["model"].items():
        assert torch.equal(v, resumed["model"][k]), k
    assert whole["optimizer"]["state"][0]["exp_avg"].equal(
        resumed["optimizer"]["state"][0]["exp_avg"])
    assert [r["val_bleu4"] for r in whole["log"]] == [r["val_bleu4"] for r in resumed["log"]]


class _PowerCut(Exception):
    """Stands in for a crash of every rank after an epoch (torchrun stops them all)."""


def _ddp_rank(rank: int, world: int, port: int, profile: dict, out_dir, cut_after=None) -> None:
    """One rank, given the environment torchrun would give it; saves its own weights.

    ``cut_after``: raise _PowerCut on every rank once that epoch's checkpoint is written.
    """
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    real_end_epoch = tr.Trainer.end_epoch

    def end_epoch(self, *args):
        improved = real_end_epoch(self, *args)
        if self.epoch == cut_after:
            raise _PowerCut
        return improved

    tr.Trainer.end_epoch = end_epoch  # in this forked process only
    try:
        trainer = tr.Trainer(get_profile("quick", **profile), out_dir=out_dir, device="cpu")
        trainer.resume()
        trainer.fit()
        encoder = {} if trainer.encoder is None else {
            n: p.detach() for n, p in trainer.encoder.named_parameters()}
        torch.save({"decoder": trainer.model.state_dict(), "encoder": encoder},
                   out_dir / f"rank{rank}.pt")
    except _PowerCut:
        pass
    finally:
        torch.distributed.destroy_process_group()


def _two_ranks(profile: dict, out_dir, cut_after=None) -> None:
    """Run _ddp_rank on two forked processes (gloo), as torchrun --nproc_per_node 2 would."""
    # Forked ranks rendezvous through torchrun's environment variables, so the test pays for
    # no fresh interpreter (a torch import takes a minute on a slow machine). A process that
    # has started CUDA cannot fork: there (a GPU machine) the ranks are spawned instead.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.multiprocessing.start_processes(_ddp_rank, args=(2, port, profile, out_dir, cut_after),
                                          nprocs=2, start_method="spawn" if
                                          torch.cuda.is_initialized() else "fork")


# The DDP tests run gloo on forked CPU processes (CUDA cannot be forked): they only make sense
# on the CPU. `make gpu-check` runs the same code under torchrun with NCCL on the GPUs.
def test_ddp_two_processes_equal_one(tiny, tmp_path):
    profile = dict(TINY, epochs=1, dropout=0.0)
    tr.train(get_profile("quick", **profile), out_dir=tmp_path / "one", device="cpu")
    _two_ranks(profile, tmp_path / "two")
    one, two = model_state(tmp_path / "one" / "last.pt"), model_state(tmp_path / "two" / "last.pt")
    start = tr.Trainer(get_profile("quick", **profile), out_dir="unused",
                       device="cpu").model.state_dict()
    # Two ranks add their gradients in another order than one process, and Adam divides by
    # the gradients' own size, so rounding differs with the CPU's kernels: 3.8e-6 on an Intel
    # Xeon, under 2e-6 on an AMD EPYC, where training moved each tensor by 3e-3. Ranks that
    # do not share their gradients end about a step apart (5.8e-3): the bound is 1 % of one.
    for k, v in one.items():
        moved, apart = (v - start[k]).abs().max(), (v - two[k]).abs().max()
        assert apart <= 0.01 * moved, (k, float(apart), float(moved))
    assert any(not torch.equal(v, start[k]) for k, v in one.items())  # it did train


def test_ddp_fine_tuned_encoder_stays_the_same_on_every_rank(tiny, tmp_path):
    # the encoder's trainable block is inside the one DistributedDataParallel with the decoder
    _two_ranks(dict(TINY, epochs=1, fine_tune=1), tmp_path)
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    start = tr.Trainer(get_profile("quick", **TINY, fine_tune=1), out_dir="unused",
                       device="cpu").encoder
    assert rank0["encoder"] and any(not torch.equal(v, dict(start.named_parameters())[n])
                                    for n, v in rank0["encoder"].items())  # it trained
    for part in ("encoder", "decoder"):
        for k, v in rank0[part].items():
            assert torch.equal(v, rank1[part][k]), (part, k, (v - rank1[part][k]).abs().max())


def test_ddp_resume_equals_an_uninterrupted_run(tiny, tmp_path):
    profile = dict(TINY, epochs=2)
    _two_ranks(profile, tmp_path / "whole")
    _two_ranks(profile, tmp_path / "cut", cut_after=1)
    assert torch.load(tmp_path / "cut" / "last.pt", weights_only=True)["epoch"] == 1
    assert not (tmp_path / "cut" / "rank0.pt").exists()  # it was cut
    _two_ranks(profile, tmp_path / "cut")  # resumes from last.pt
    whole, resumed = (torch.load(tmp_path / d / "last.pt", weights_only=True)
                      for d in ("whole", "cut"))
    assert resumed["epoch"] == 2 and [r["epoch"] for r in resumed["log"]] == [1, 2]
    for k, v in whole["model"].items():
        assert torch.equal(v, resumed["model"][k]), k
    for r in (0, 1):  # every rank, not only the one that saved
        ranks = (torch.load(tmp_path / d / f"rank{r}.pt", weights_only=True)["decoder"]
                 for d in ("whole", "cut"))
        assert all(torch.equal(v, b[k]) for a, b in [tuple(ranks)] for k, v in a.items())


def test_ensure_trained_reuses_a_finished_run(tiny, monkeypatch):
    profile = replace(tiny, epochs=1)
    calls = []
    real_train = tr.train
    monkeypatch.setattr(tr, "train", lambda *a, **kw: calls.append(a) or real_train(*a, **kw))
    decoder, vocab = tr.ensure_trained(profile)
    best = tr.run_dir(profile, "soft") / "best.pt"
    stamp = best.stat().st_mtime_ns
    again, _ = tr.ensure_trained(profile)
    assert len(calls) == 1 and best.stat().st_mtime_ns == stamp
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in decoder.state_dict().items())
    assert len(vocab) == decoder.config["vocab_size"]
    tr.ensure_trained(replace(profile, lr=5e-4))  # another configuration: train again, beside it
    assert len(calls) == 2 and best.stat().st_mtime_ns == stamp
    assert tr.run_dir(replace(profile, lr=5e-4), "soft") != tr.run_dir(profile, "soft")
    assert not list(tr.run_dir(profile, "soft").parent.glob("*.replaced-*"))


def test_fine_tuning_trains_from_images(tiny, tmp_path):
    profile = replace(tiny, epochs=1, fine_tune=1)
    tr.train(profile, out_dir=tmp_path)
    ckpt = torch.load(tmp_path / "last.pt", weights_only=True)
    trainer = tr.Trainer(profile, out_dir=tmp_path / "fresh")
    trained = [n for n, p in trainer.encoder.named_parameters() if p.requires_grad]
    assert trained and ckpt["optimizer"]["param_groups"][1]["lr"] == profile.encoder_lr
    changed = [n for n in trained if not torch.equal(ckpt["encoder"][n],
                                                      trainer.encoder.state_dict()[n])]
    assert changed, "no trainable encoder weight moved"


def test_autocast_dtype_follows_the_profile_and_device():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    profile = get_profile("quick")
    assert tr.autocast_dtype(profile, cpu) is None  # auto: float32 on the CPU, as before
    assert tr.autocast_dtype(replace(profile, amp="bf16"), cpu) == torch.bfloat16
    assert tr.autocast_dtype(replace(profile, amp="off"), cuda) is None
    assert tr.autocast_dtype(replace(profile, amp="fp16"), cuda) == torch.float16
    with pytest.raises(ValueError, match="needs a CUDA device"):
        tr.autocast_dtype(replace(profile, amp="fp16"), cpu)
    with pytest.raises(ValueError, match="use one of auto, bf16, fp16, off"):
        tr.autocast_dtype(replace(profile, amp="half"), cpu)


def test_bf16_autocast_training_tracks_float32(tiny, tmp_path, device):
    # The same 9 steps (3 epochs of 3 batches, no dropout) in float32 and under bf16 autocast.
    if device.type == "cuda" and not torch.cuda.is_bf16_supported(including_emulation=False):
        pytest.skip("this GPU has no native bfloat16 (before Ampere)")
    runs = {}
    for amp in ("off", "bf16"):
        profile = replace(tiny, amp=amp, dropout=0.0)
        trainer = tr.Trainer(profile, out_dir=tmp_path / amp, device=str(device))
        start = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        losses = [trainer.train_epoch() for trainer.epoch in range(3)]
        runs[amp] = losses, trainer.model.state_dict()
    (fp32_losses, fp32), (bf16_losses, bf16) = runs["off"], runs["bf16"]
    # Tolerances: the epoch losses agree within 0.1% (on our CPU they differed by 2.4e-5), and
    # every weight ends within 20% of how far float32 moved it (7.2% at worst here: Adam's
    # first steps move each weight by about lr whatever the gradient's size, so the rounding
    # of a tiny gradient shows in full).
    assert fp32_losses[-1] < fp32_losses[0]
    for a, b in zip(fp32_losses, bf16_losses, strict=True):
        assert abs(a - b) <= 1e-3 * a, (fp32_losses, bf16_losses)
    for k, w in fp32.items():
        moved = (w - start[k].to(w.device)).norm()
        assert (bf16[k] - w).norm() <= 0.2 * moved, (k, float((bf16[k] - w).norm()), float(moved))
    assert any(not torch.equal(fp32[k], bf16[k]) for k in fp32)  # bf16 did run


def test_deterministic_profile_turns_on_deterministic_kernels(tiny, tmp_path, monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    try:
        tr.Trainer(replace(tiny, deterministic=True), out_dir=tmp_path)
        assert torch.are_deterministic_algorithms_enabled()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    finally:
        torch.use_deterministic_algorithms(False)


def test_a_run_without_a_scaler_resumes_where_float16_needs_one(tiny, tmp_path):
    # a CPU run (no GradScaler state) continued on a GPU that trains in float16
    tr.train(replace(tiny, epochs=1), out_dir=tmp_path, device="cpu")
    trainer = tr.Trainer(replace(tiny, epochs=1), out_dir=tmp_path, device="cpu")
    trainer.scaler = torch.amp.GradScaler("cpu", enabled=True)  # as on CUDA with float16
    assert trainer.resume() and trainer.epoch == 1


def test_inf_features_stop_training_at_the_first_batch(tiny, tmp_path):
    trainer = tr.Trainer(tiny, out_dir=tmp_path)
    # overflowed features, where the training step takes its annotation vectors
    trainer.caption_model.annotations = lambda x: torch.full_like(x, float("inf"))
    with pytest.raises(tr.NonFiniteLossError) as error:
        trainer.fit()
    message = str(error.value)
    for part in ("epoch 1, batch 1 of", "learning rate", "features", "float16"):
        assert part in message, part
    assert not list(tmp_path.glob("*.pt"))  # nothing of the broken epoch is saved


def test_an_absurd_learning_rate_stops_training_with_its_cause(tiny, tmp_path):
    with pytest.raises(tr.NonFiniteLossError, match=r"epoch 1, batch [2-9].*lr=1e\+36"):
        tr.train(replace(tiny, lr=1e36), out_dir=tmp_path)  # batch 1 is finite, then it blows up


def test_encoding_on_the_device_trains_like_the_feature_cache(tiny, tmp_path):
    # the coco profile does not cache its training features: the frozen encoder runs on the
    # uint8 images every step instead; the features, hence the losses, must be the same
    cached = tr.Trainer(replace(tiny, epochs=1), out_dir=tmp_path / "cached")
    encoded = tr.Trainer(replace(tiny, epochs=1, feature_cache=False), out_dir=tmp_path / "enc")
    assert cached.encoder is None and encoded.encoder is not None
    assert len(encoded.optimizer.param_groups) == 1  # the frozen encoder has nothing to learn
    images, captions, _ = next(iter(encoded.loader))
    features, captions_too, _ = next(iter(cached.loader))
    assert images.dtype == torch.uint8 and torch.equal(captions, captions_too)
    assert torch.allclose(encoded.caption_model.annotations(images), features, rtol=2e-3, atol=1e-3)
    losses = []
    for trainer in (cached, encoded):
        seed_everything(0)  # the same dropout masks
        losses.append(trainer.train_epoch())
    assert losses[0] == pytest.approx(losses[1], rel=1e-4), losses


@pytest.fixture
def uncached(tiny, tmp_path):
    """The coco path on the tiny data: no training feature cache, every caption of each image."""
    return tr.Trainer(replace(tiny, feature_cache=False), out_dir=tmp_path, one_per_image=False)


def test_a_run_that_encodes_images_encodes_each_once_an_epoch(uncached):
    encoded = []
    uncached.encoder.register_forward_hook(lambda module, args, out: encoded.append(len(out)))
    uncached.train_epoch()
    assert sum(encoded) == len(uncached.train_set.meta)  # not once per caption (5 times)


def test_image_batches_hold_every_pair_of_the_epoch_once(uncached, tiny):
    train_set, cpi = uncached.train_set, uncached.train_set.captions_per_image
    n = len(train_set.meta)
    which = {train_set.image(j).numpy().tobytes(): j for j in range(n)}
    assert len(which) == n  # every image tells which it is
    expected = sorted((k // cpi, tuple(train_set.captions[k].tolist()), int(train_set.lengths[k]))
                      for k in range(n * cpi))  # the pairs of a caption-by-caption epoch
    for epoch in (0, 1):
        uncached.data.set_epoch(epoch)
        pairs, orders = [], []
        for images, captions, lengths in uncached.loader:
            assert len(captions) == cpi * len(images) <= tiny.batch_size
            rows = [which[image.numpy().tobytes()] for image in images]
            orders += rows
            pairs += [(rows[i // cpi], tuple(c.tolist()), int(length))
                      for i, (c, length) in enumerate(zip(captions, lengths, strict=True))]
        assert sorted(pairs) == expected
        if epoch == 0:
            first = orders
    assert orders != first  # reshuffled every epoch


def test_an_image_batch_has_the_loss_of_encoding_per_caption(uncached):
    images, captions, lengths = next(iter(uncached.loader))
    cpi = len(captions) // len(images)
    assert cpi == uncached.train_set.captions_per_image > 1
    model, losses = uncached.caption_model.train(), []
    for x in (images, images.repeat_interleave(cpi, dim=0)):  # each image once; per caption
        seed_everything(0)  # the same dropout masks
        losses.append(uncached.loss_fn(model(x, captions, lengths), captions, lengths)[0])
    assert torch.allclose(losses[0], losses[1], rtol=1e-6, atol=0), losses
    with pytest.raises(ValueError, match="the same number of consecutive captions"):
        model(images[:3], captions[:5], lengths[:5])


def test_cosine_schedule_falls_to_zero_over_the_budget_and_resumes(tiny, tmp_path):
    import math

    cosine = replace(tiny, lr_schedule="cosine", epochs=4)
    expected = [cosine.lr * (1 + math.cos(math.pi * k / 4)) / 2 for k in range(4)]
    whole = tr.train(cosine, out_dir=tmp_path / "whole")

    def stop_after_two_epochs(log):
        if len(log) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tr.train(cosine, out_dir=tmp_path / "cut", callback=stop_after_two_epochs)
    resumed = tr.train(cosine, out_dir=tmp_path / "cut")
    assert whole.lr.tolist() == pytest.approx(expected)
    assert resumed.lr.tolist() == pytest.approx(expected)


def test_an_unknown_schedule_is_refused_with_the_choices(tiny, tmp_path):
    with pytest.raises(ValueError, match="lr_schedule='linear'.*plateau.*cosine"):
        tr.train(replace(tiny, lr_schedule="linear"), out_dir=tmp_path)


def test_hard_attention_continues_the_soft_run_from_its_warm_start_epoch(tiny, tmp_path):
    profile = replace(tiny, hard_warm_start=2)  # 2 soft epochs, then 1 hard one: 3 in all
    soft_dir, hard_dir = tmp_path / "soft", tmp_path / "hard"
    hard_log = tr.train(profile, "hard", out_dir=hard_dir, soft_dir=soft_dir)  # trains soft first
    start = torch.load(warm_start_path(soft_dir, 2), weights_only=True)
    assert start["epoch"] == 2 and start["config"]["attention"] == "soft"
    assert torch.load(soft_dir / "last.pt", weights_only=True)["finished"]  # the whole soft run
    assert hard_log.epoch.tolist() == [1, 2, 3]
    assert hard_log.iloc[:2].to_dict("records") == start["log"]  # the soft run's first two
    assert torch.load(hard_dir / "best.pt", weights_only=True)["epoch"] == 3  # a hard epoch
    trainer = tr.Trainer(profile, "hard", tmp_path / "again")
    tr.start_from_soft(trainer, soft_dir)
    assert trainer.epoch == 2 and trainer.best_bleu4 < 0
    assert all(torch.equal(v, start["model"][k]) for k, v in trainer.model.state_dict().items())
    steps = trainer.optimizer.state_dict()["state"][0]["step"]
    assert steps == start["optimizer"]["state"][0]["step"] > 0  # Adam's moments carried over
    hard = model_state(hard_dir / "last.pt")
    assert not torch.equal(hard["attention.W_h.weight"], start["model"]["attention.W_h.weight"])


def test_early_stopping_waits_for_the_epoch_hard_attention_starts_from(tiny, tmp_path,
                                                                        monkeypatch):
    # validation BLEU-4 never improves after epoch 1: with patience 1 the soft run would stop
    # after epoch 2, before the epoch-3.pt the hard run needs, and the hard run would fail
    monkeypatch.setattr(tr, "validate", lambda trainer: (1.0, 0.5))
    profile = replace(tiny, epochs=4, hard_warm_start=3, early_stop_patience=1)
    soft_dir = tmp_path / "soft"
    hard_log = tr.train(profile, "hard", out_dir=tmp_path / "hard", soft_dir=soft_dir)
    assert warm_start_path(soft_dir, 3).exists()
    assert torch.load(soft_dir / "last.pt", weights_only=True)["epoch"] == 3  # then it stopped
    assert hard_log.epoch.tolist() == [1, 2, 3, 4]


def test_only_a_warm_start_makes_the_soft_run_keep_an_epoch(tiny, tmp_path):
    tr.train(tiny, out_dir=tmp_path)
    assert not list(tmp_path.glob("epoch-*.pt"))


@pytest.mark.parametrize("k", [-1, 3, 5])
def test_a_warm_start_outside_the_budget_is_refused(tiny, k):
    with pytest.raises(ValueError, match=rf"hard_warm_start={k} must be 0 .* or between 1 and "
                                         r"epochs - 1 \(epochs=3\)"):
        replace(tiny, hard_warm_start=k)


FREE_AND_REFAULT = """
import resource, sys, torch
from sat_helpers.runtime import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else False
faults = []
for r in range(6):  # a step's pattern: tensors of a few MB (sizes vary), kept, then all freed
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    kept = [torch.ones(64 + r, 196, 128) for _ in range(10)]
    del kept
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(applied, sum(faults[2:]))
"""


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's allocator on Linux")
def test_keep_freed_memory_stops_a_steps_tensors_faulting_back_in():
    # without it glibc unmaps the freed 64 MB and every later round faults all of it back in
    def run(mode):
        out = subprocess.run([sys.executable, "-c", FREE_AND_REFAULT, mode], check=True,
                             capture_output=True, text=True).stdout.split()
        return out[0] == "True", int(out[1])

    default, kept = run("default"), run("keep")
    if not kept[0]:
        pytest.skip("not glibc: keep_freed_memory leaves the allocator as it is")
    assert default[1] > 40_000, f"expected glibc to refault the freed tensors, got {default[1]}"
    assert kept[1] < default[1] / 10, (kept, default)
