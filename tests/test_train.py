"""Training: the loss learns, checkpoints are plain data, resume is exact, DDP = one process."""

import os
import socket
from dataclasses import replace

import pytest
import torch

from sat_helpers import train as tr
from sat_helpers.config import get_profile
from sat_helpers.decoder import DecoderOutput
from sat_helpers.encoder import ensure_features

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
    loss, parts = tr.caption_loss(out, captions, lengths, profile)
    real = scores[[0, 0, 0, 1, 1], [0, 1, 2, 0, 1]]
    expected = torch.nn.functional.cross_entropy(real, torch.tensor([5, 6, 2, 4, 2]))
    assert torch.allclose(loss, expected) and parts["penalty"] == 0.0
    scores[1, 2:] = 100.0  # padding: must not matter
    assert torch.allclose(tr.caption_loss(out, captions, lengths, profile)[0], expected)
    with_penalty, parts = tr.caption_loss(out, captions, lengths, replace(profile, lam=1.0))
    assert parts["penalty"] > 0 and torch.allclose(with_penalty, expected + parts["penalty"])


def test_loss_decreases_on_a_batch(tiny, tmp_path):
    # one batch, over and over: the model must fit it (lr 3e-3 so that 25 steps show it)
    trainer = tr.Trainer(replace(tiny, dropout=0.0, lr=3e-3), out_dir=tmp_path)
    features, captions, lengths = next(iter(trainer.loader))
    losses = []
    for _ in range(25):
        loss, _ = trainer.loss_fn(trainer.model(features, captions, lengths), captions, lengths,
                                  trainer.profile)
        trainer.optimizer.zero_grad()
        loss.backward()
        trainer.optimizer.step()
        losses.append(loss.item())
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


def test_checkpoint_is_plain_data_and_loads(tiny, tmp_path):
    log = tr.train(replace(tiny, epochs=2), out_dir=tmp_path)
    assert list(log.columns) == tr.LOG_COLUMNS and log.epoch.tolist() == [1, 2]
    ckpt = torch.load(tmp_path / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["finished"] and ckpt["profile"]["name"] == "quick"
    assert set(ckpt) >= {"model", "optimizer", "scheduler", "rng", "vocab", "config"}
    assert ckpt["vocab"] == tr.Trainer(tiny, out_dir=tmp_path).vocab.words
    decoder, vocab, _ = tr.load_checkpoint(tmp_path / "best.pt")
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    assert all(torch.equal(v, best["model"][k]) for k, v in decoder.state_dict().items())
    assert not decoder.training and len(vocab) == decoder.config["vocab_size"]
    assert (tmp_path / "log.csv").read_text().count("\n") == 3


def test_resume_after_a_kill_is_bit_identical(tiny, tmp_path):
    tr.train(tiny, out_dir=tmp_path / "whole")

    def kill_after_first_epoch(log):
        if len(log) == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tr.train(tiny, out_dir=tmp_path / "killed", callback=kill_after_first_epoch)
    assert torch.load(tmp_path / "killed" / "last.pt", weights_only=True)["epoch"] == 1
    seen = []
    log = tr.train(tiny, out_dir=tmp_path / "killed", callback=lambda log: seen.append(len(log)))
    assert seen == [2, 3] and log.epoch.tolist() == [1, 2, 3]
    whole, resumed = (torch.load(tmp_path / d / "last.pt", weights_only=True)
                      for d in ("whole", "killed"))
    for k, v in whole["model"].items():
        assert torch.equal(v, resumed["model"][k]), k
    assert whole["optimizer"]["state"][0]["exp_avg"].equal(
        resumed["optimizer"]["state"][0]["exp_avg"])
    assert [r["val_bleu4"] for r in whole["log"]] == [r["val_bleu4"] for r in resumed["log"]]


def _ddp_rank(rank: int, world: int, port: int, profile: dict, out_dir) -> None:
    """One rank, given the environment torchrun would give it."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    tr.train(get_profile("quick", **profile), out_dir=out_dir, device="cpu")
    torch.distributed.destroy_process_group()


def test_ddp_two_processes_equal_one(tiny, tmp_path):
    # Two forked ranks rendezvous through torchrun's environment variables, so the test pays for
    # no fresh interpreter (a torch import takes a minute on a slow machine).
    profile = dict(TINY, epochs=1, dropout=0.0)
    tr.train(get_profile("quick", **profile), out_dir=tmp_path / "one")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.start_processes(_ddp_rank, args=(2, port, profile, tmp_path / "two"),
                                          nprocs=2, start_method="fork")
    one, two = model_state(tmp_path / "one" / "last.pt"), model_state(tmp_path / "two" / "last.pt")
    start = tr.Trainer(get_profile("quick", **profile), out_dir="unused").model.state_dict()
    for k, v in one.items():
        assert torch.allclose(v, two[k], atol=2e-6), (k, (v - two[k]).abs().max())
    assert any(not torch.equal(v, start[k]) for k, v in one.items())  # it did train


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
