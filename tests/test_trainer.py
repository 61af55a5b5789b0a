"""The shared trainer with a small fake model: selection, test-once, determinism, resume."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from benchmark.api import Reranker, Stage, Step, bce_loss
from benchmark.batches import SplitTensors
from benchmark.config import TrainConfig
from benchmark.trainer import NonFiniteLoss, checkpoint_progress, fit, min_epochs_left, seed_everything


class ItemScorer(Reranker):
    """Per-item bias + a user-item dot product: enough to learn something on real lists."""

    def __init__(self, spec, *, dim: int = 8, interrupt_at: int | None = None, blow_up: bool = False):
        super().__init__(spec)
        self.item = torch.nn.Embedding(spec.n_items + 1, dim)
        self.user = torch.nn.Embedding(spec.n_users, dim)
        self.bias = torch.nn.Embedding(spec.n_items + 1, 1)
        self.dropout = torch.nn.Dropout(0.2)  # exercises the RNG state across resume
        self.interrupt_at, self.blow_up = interrupt_at, blow_up
        self.epochs_seen: list[int] = []

    def score(self, batch):
        u = self.dropout(self.user(batch.user))[:, None, :]
        return (u * self.item(batch.items)).sum(-1) + self.bias(batch.items)[..., 0]

    def loss(self, batch):
        value = bce_loss(self.score(batch), batch.labels, batch.mask)
        return value * float("nan") if self.blow_up else value

    def epoch_begin(self, epoch):
        self.epochs_seen.append(epoch)
        if epoch == self.interrupt_at:
            raise KeyboardInterrupt  # a kill between epochs


@pytest.fixture(scope="module")
def splits(tiny_lists):
    return {s: SplitTensors.of(tiny_lists, s) for s in ("train", "val", "test")}


CFG = TrainConfig(batch_size=256, max_epochs=6, patience=2, min_patience_steps=0, lr=0.05)  # patience in epochs


def run(tiny_spec, splits, seed=0, cfg=CFG, model_kw=None, **kw):
    seed_everything(seed)
    model = ItemScorer(tiny_spec, **(model_kw or {}))
    return model, fit(model, splits["train"], splits["val"], splits["test"], cfg, seed=seed, k=6, **kw)


def test_selects_on_validation_and_restores_best(tiny_spec, splits):
    model, result = run(tiny_spec, splits)
    val_curve = [h["val"]["N@6"] for h in result.history]
    assert result.best_epoch == 1 + int(np.argmax(val_curve))
    assert result.val["N@6"] == pytest.approx(max(val_curve))  # the restored state is the best one
    assert result.epochs_run == len(result.history) <= CFG.max_epochs
    assert set(result.test_per_request) >= {"H@6", "N@6", "M@6", "F1@6", "AUC"}
    assert len(result.test_per_request["N@6"]) == len(splits["test"])


def test_test_split_touched_once(tiny_spec, splits):
    calls = []

    class Counting(SplitTensors):
        def batches(self, *a, **kw):
            calls.append(1)
            return super().batches(*a, **kw)

    test = Counting.__new__(Counting)
    test.__dict__.update(splits["test"].__dict__)
    seed_everything(0)
    fit(ItemScorer(tiny_spec), splits["train"], splits["val"], test, CFG, seed=0, k=6)
    assert len(calls) == 1


def test_same_seed_same_metrics_other_seed_differs(tiny_spec, splits):
    _, a = run(tiny_spec, splits, seed=3)
    _, b = run(tiny_spec, splits, seed=3)
    _, c = run(tiny_spec, splits, seed=4)
    assert a.test == b.test and a.history == [dict(h, seconds=g["seconds"]) for h, g in zip(b.history, a.history)]
    assert a.test != c.test


def test_min_epochs_left_follows_the_stopping_rule():
    rule = {"patience": 50, "min_epochs": 0, "max_epochs": 200, "stages": 1}
    at = lambda epoch, stale, **kw: min_epochs_left({"epoch": epoch, "stale": stale, "stopping": {**rule, **kw}})
    assert at(40, 12) == 38  # patience: 50 epochs without improvement
    assert at(40, 50) == 0  # already out of patience: the next epoch check stops it
    assert at(44, 18, patience=30, min_epochs=100) == 56  # DNR may not stop before its switch epoch T + 1
    assert at(190, 0) == 10  # the epoch cap comes first
    assert min_epochs_left({"epoch": 3, "stale": 0, "stopping": None}) is None  # an older checkpoint: no rule recorded


def test_interrupted_run_resumes_to_identical_result(tiny_spec, splits, tmp_path):
    cfg = dataclasses.replace(CFG, patience=10)
    _, straight = run(tiny_spec, splits, cfg=cfg)
    ckpt = tmp_path / "run.ckpt"
    with pytest.raises(KeyboardInterrupt):
        run(tiny_spec, splits, cfg=cfg, model_kw={"interrupt_at": 4}, checkpoint=ckpt, checkpoint_tag="x")
    assert ckpt.exists()
    progress = checkpoint_progress(ckpt)  # what ``--plan`` shows of it
    assert progress["tag"] == "x" and progress["stage"] == 0 and progress["epoch"] == progress["epochs_run"] == 3
    assert 1 <= progress["best_epoch"] <= 3 and progress["train_seconds"] > 0
    assert progress["stopping"] == {"patience": 10, "min_epochs": 0, "max_epochs": cfg.max_epochs, "stages": 1}
    assert min_epochs_left(progress) == 3  # epochs 4-6: the 6-epoch cap ends it before the patience of 10
    assert checkpoint_progress(tmp_path / "none.ckpt") is None
    (tmp_path / "bad.ckpt").write_bytes(b"not a checkpoint")
    assert "error" in checkpoint_progress(tmp_path / "bad.ckpt")
    seed_everything(123)  # the resumed process starts with a different RNG state
    model = ItemScorer(tiny_spec)
    resumed = fit(model, splits["train"], splits["val"], splits["test"], cfg, seed=0, k=6, checkpoint=ckpt,
                  checkpoint_tag="x")
    assert model.epochs_seen == [4, 5, 6] and resumed.resumed_from_epoch == 3
    assert resumed.test == straight.test
    assert [h["val"] for h in resumed.history] == [h["val"] for h in straight.history]
    # a checkpoint written for another configuration is ignored
    model = ItemScorer(tiny_spec)
    seed_everything(0)
    fit(model, splits["train"], splits["val"], splits["test"], cfg, seed=0, k=6, checkpoint=ckpt, checkpoint_tag="y")
    assert model.epochs_seen[0] == 1


def test_non_finite_loss_stops_the_run(tiny_spec, splits):
    with pytest.raises(NonFiniteLoss, match="non-finite loss"):
        run(tiny_spec, splits, model_kw={"blow_up": True})


class TwoSteps(ItemScorer):
    """Two steps over disjoint parameters, the second active from epoch 3; min_epochs 5."""

    def stages(self):
        bias_only = lambda: [self.bias.weight]  # noqa: E731
        rest = lambda: [self.item.weight, self.user.weight]  # noqa: E731
        return [Stage("main", [Step("rest", self.loss, rest),
                               Step("bias", lambda b: {"bias_part": self.loss(b)}, bias_only, active=lambda e: e >= 3)],
                      min_epochs=5)]


def test_steps_update_only_their_parameters_and_min_epochs(tiny_spec, splits):
    cfg = dataclasses.replace(CFG, patience=1, max_epochs=2)
    seed_everything(0)
    model = TwoSteps(tiny_spec)
    bias_before = model.bias.weight.detach().clone()
    fit(model, splits["train"], splits["val"], splits["test"], cfg, seed=0, k=6)
    assert torch.equal(model.bias.weight, bias_before)  # inactive before epoch 3
    cfg = dataclasses.replace(CFG, patience=1, max_epochs=8)
    seed_everything(0)
    model = TwoSteps(tiny_spec)
    result = fit(model, splits["train"], splits["val"], splits["test"], cfg, seed=0, k=6)
    assert result.epochs_run >= 5  # early stopping may not end before min_epochs
    parts = [h["train_loss"] for h in result.history]
    assert "bias" not in parts[0] and parts[2]["bias"]["bias_part"] > 0


class TwoPhases(ItemScorer):
    """Two stages; ``on_start`` records which phase ``score`` should serve (EGRerank's pattern)."""

    def __init__(self, spec, **kw):
        super().__init__(spec, **kw)
        self.phases: list[str] = []

    def stages(self):
        return [Stage("first", [Step("all", self.loss, self.parameters)], max_epochs=2,
                      on_start=lambda: self.phases.append("first")),
                Stage("second", [Step("bias", self.loss, lambda: [self.bias.weight])],
                      on_start=lambda: self.phases.append("second"))]


def test_stage_on_start_runs_per_phase_and_again_on_resume(tiny_spec, splits, tmp_path):
    cfg = dataclasses.replace(CFG, patience=10, max_epochs=4)
    seed_everything(0)
    model = TwoPhases(tiny_spec)
    fit(model, splits["train"], splits["val"], splits["test"], cfg, seed=0, k=6)
    assert model.phases == ["first", "second"]
    ckpt = tmp_path / "run.ckpt"
    seed_everything(0)
    model = TwoPhases(tiny_spec, interrupt_at=3)  # the third epoch of phase two
    with pytest.raises(KeyboardInterrupt):
        fit(model, splits["train"], splits["val"], splits["test"], cfg, seed=0, k=6, checkpoint=ckpt,
            checkpoint_tag="x")
    model = TwoPhases(tiny_spec)
    fit(model, splits["train"], splits["val"], splits["test"], cfg, seed=0, k=6, checkpoint=ckpt, checkpoint_tag="x")
    assert model.phases == ["second"] and model.epochs_seen == [3, 4]


class Sparse(ItemScorer):
    """Validated every ``every`` epochs (``Stage.eval_every``, DiffuRec's setting)."""

    def __init__(self, spec, every=2, **kw):
        super().__init__(spec, **kw)
        self.every = every

    def stages(self):
        return [Stage("main", [Step("model", self.loss, self.parameters)], eval_every=self.every)]


def test_eval_every_validates_on_its_epochs_and_the_last(tiny_spec, splits):
    cfg = dataclasses.replace(CFG, patience=10, max_epochs=7)
    seed_everything(0)
    result = fit(Sparse(tiny_spec), splits["train"], splits["val"], splits["test"], cfg, seed=0, k=6)
    assert result.epochs_run == 7 and [h["epoch"] for h in result.history] == list(range(1, 8))
    assert [h["epoch"] for h in result.history if "val" in h] == [2, 4, 6, 7]
    assert result.best_epoch in (2, 4, 6, 7) and all(h["seconds"] > 0 for h in result.history)
    # patience counts epochs: with nothing counted as better after the first validation (epoch 2),
    # the validation at epoch 4 leaves 2 epochs without improvement, and patience 2 stops there
    cfg = dataclasses.replace(CFG, patience=2, max_epochs=20, min_delta=1.0)
    seed_everything(0)
    result = fit(Sparse(tiny_spec), splits["train"], splits["val"], splits["test"], cfg, seed=0, k=6)
    assert (result.epochs_run, result.best_epoch) == (4, 2)
    # eval_every=1 is the every-epoch trainer: the same history as the default stage
    cfg = dataclasses.replace(CFG, patience=10, max_epochs=4)
    _, plain = run(tiny_spec, splits, cfg=cfg)
    seed_everything(0)
    every = fit(Sparse(tiny_spec, every=1), splits["train"], splits["val"], splits["test"], cfg, seed=0, k=6)
    assert [h["val"] for h in every.history] == [h["val"] for h in plain.history] and every.test == plain.test


def test_eval_every_resumes_to_identical_result(tiny_spec, splits, tmp_path):
    cfg = dataclasses.replace(CFG, patience=10, max_epochs=7)
    seed_everything(0)
    straight = fit(Sparse(tiny_spec, every=3), splits["train"], splits["val"], splits["test"], cfg, seed=0, k=6)
    ckpt = tmp_path / "run.ckpt"
    seed_everything(0)
    with pytest.raises(KeyboardInterrupt):  # killed after epoch 4: one validation done, one epoch since
        fit(Sparse(tiny_spec, every=3, interrupt_at=5), splits["train"], splits["val"], splits["test"], cfg, seed=0,
            k=6, checkpoint=ckpt, checkpoint_tag="x")
    seed_everything(123)
    model = Sparse(tiny_spec, every=3)
    resumed = fit(model, splits["train"], splits["val"], splits["test"], cfg, seed=0, k=6, checkpoint=ckpt,
                  checkpoint_tag="x")
    assert model.epochs_seen == [5, 6, 7] and resumed.test == straight.test
    assert resumed.history == [dict(h, seconds=r["seconds"]) for h, r in zip(straight.history, resumed.history)]



def test_patience_covers_at_least_min_patience_steps(tiny_spec, splits):
    n = len(splits["train"])
    # KuaiRand at Table 7's batch: 4,937 requests are 3 steps of 2,048; 150 steps need 50 epochs
    kuairand = TrainConfig(batch_size=2048, patience=10, min_patience_steps=150)
    assert (kuairand.steps_per_epoch(4937), kuairand.patience_epochs(4937), kuairand.patience_steps(4937)) == (3, 50, 150)
    assert kuairand.patience_epochs(151304) == 10  # ML-1M: 74 steps per epoch, the floor does not bind
    assert dataclasses.replace(kuairand, min_patience_steps=0).patience_epochs(4937) == 10
    with pytest.raises(Exception, match="min_patience_steps"):
        dataclasses.replace(kuairand, min_patience_steps=-1).validate()
    # a model that cannot improve (lr ~ 0) stops after the applied patience: one step per epoch,
    # patience 2 epochs, floor 5 steps -> 5 stale epochs after the first
    flat = TrainConfig(batch_size=n, max_epochs=50, patience=2, min_patience_steps=5, lr=1e-12)
    _, result = run(tiny_spec, splits, cfg=flat)
    assert result.best_epoch == 1 and result.epochs_run == 6
    _, result = run(tiny_spec, splits, cfg=dataclasses.replace(flat, min_patience_steps=0))
    assert result.epochs_run == 3


def _one_step(model, batch, micro_batch):
    from benchmark.trainer import train_steps

    stage = model.stages()[0]
    optims = [torch.optim.Adam(list(step.parameters()), lr=1e-2) for step in stage.steps]
    model.train()
    return train_steps(model, stage.steps, optims, batch, 1, 5.0, "main", micro_batch)


MICRO_BATCHABLE = ("prm", "prm-c-score", "prm-plus-score", "prm-w-score", "prm-large", "sasrec", "caser",
                   "gru4rec", "mir", "dlcm", "setrank", "pier", "pier-lite", "pier-c-score", "pier-plus-score",
                   "pier-w-score", "nar4rec", "dcdr", "diffurec")


def _row_invariant_draws(monkeypatch):
    """Replace torch's random draws by fixed values that depend on the position within a
    request's row but not on the row, so each request gets the same draws whether its batch is
    cut into slices or not (DCDR's and DiffuRec's training draws: steps, corruptions, noise, the
    target positive). Only the training step runs under it."""
    def shape_of(args, kwargs):
        size = kwargs.get("size", args[0] if len(args) == 1 and not isinstance(args[0], int) else args)
        return tuple(int(n) for n in size)

    def pattern(shape, dtype=None, device=None):
        shape = tuple(shape)
        n = math.prod(shape[1:])
        row = (torch.arange(n, dtype=torch.float64) * 0.6180339887 % 1.0).to(dtype or torch.get_default_dtype())
        return row.reshape(shape[1:]).expand(shape).clone().to(device or "cpu")

    monkeypatch.setattr(torch, "rand", lambda *a, **k: pattern(shape_of(a, k), k.get("dtype"), k.get("device")))
    monkeypatch.setattr(torch, "randn", lambda *a, **k: pattern(shape_of(a, k), k.get("dtype"), k.get("device")) - 0.5)
    monkeypatch.setattr(torch, "rand_like", lambda t, **k: pattern(t.shape, t.dtype, t.device))
    monkeypatch.setattr(torch, "randn_like", lambda t, **k: pattern(t.shape, t.dtype, t.device) - 0.5)
    monkeypatch.setattr(torch, "randint", lambda low, high=None, size=None, **k: torch.full(
        tuple(size), (low + high) // 2 if high is not None else low // 2, dtype=torch.long, device=k.get("device")))
    monkeypatch.setattr(torch, "multinomial", lambda p, n, **k: torch.argsort(
        (p > 0).float(), dim=-1, descending=True, stable=True)[..., :n])


def test_the_micro_batchable_methods_are_these(tiny_spec):
    """A method is marked only after its losses were checked (and the next test passes for it)."""
    from benchmark import registry

    marked = {m for m in registry.available() if registry.build(m, tiny_spec).micro_batchable}
    assert marked - {m for m in marked if m.startswith("dnr")} == set(MICRO_BATCHABLE)
    assert {m for m in marked if m.startswith("dnr")} == {m for m in registry.available() if m.startswith("dnr")}


@pytest.mark.parametrize("method", MICRO_BATCHABLE)
def test_sliced_gradient_is_the_whole_batch_gradient_for_every_micro_batchable_method(method, tiny_spec, tiny_batch,
                                                                                     monkeypatch):
    """In training mode with every dropout at 0 and row-invariant draws (so no random draw
    depends on the slicing): the loss and each parameter's gradient of slices 25 + 25 + 14 equal
    the whole batch's of 64. The first 10 lists lose their positives, so the slices differ in how
    many lists a listwise loss averages over."""
    import dataclasses as dc

    from benchmark import registry

    labels = tiny_batch.labels.clone()
    labels[:10] = 0
    batch = dc.replace(tiny_batch, labels=labels)
    runs = []
    for micro in (0, 25):
        torch.manual_seed(0)
        model = registry.build(method, tiny_spec, dropout=0.0)
        for module in model.modules():  # and any dropout the keyword does not reach
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
            elif isinstance(module, torch.nn.MultiheadAttention):
                module.dropout = 0.0
        with monkeypatch.context() as patched:
            _row_invariant_draws(patched)
            parts = _one_step(model, batch, micro)
        runs.append((model, {k: float(v.detach()) for k, v in parts["model"].items()}))
    (whole, loss_whole), (sliced, loss_sliced) = runs
    assert loss_sliced == pytest.approx(loss_whole, rel=1e-5)
    for (name, a), (_, b) in zip(whole.named_parameters(), sliced.named_parameters()):
        assert (a.grad is None) == (b.grad is None), name
        if a.grad is not None:
            assert torch.allclose(a.grad, b.grad, rtol=1e-4, atol=1e-6), name


def test_only_micro_batchable_methods_are_sliced(tiny_spec, tiny_batch):
    from benchmark import registry
    from benchmark.trainer import slices

    prm, midnn, egrerank = (registry.build(m, tiny_spec) for m in ("prm", "midnn", "egrerank"))
    assert [len(b) for b, _ in slices(prm, tiny_batch, 25)] == [25, 25, 14]
    assert sum(share for _, share in slices(prm, tiny_batch, 25)) == pytest.approx(1.0)
    for whole in (slices(midnn, tiny_batch, 25), slices(egrerank, tiny_batch, 25), slices(prm, tiny_batch, 0),
                  slices(prm, tiny_batch, 64)):
        assert len(whole) == 1 and whole[0][0] is tiny_batch  # BatchNorm / per-batch exploration / off / fits
    assert registry.build("dnr-b", tiny_spec).micro_batchable
    assert registry.build("dnr-pier", tiny_spec).micro_batchable  # follows its backbone


def test_dnr_generator_step_attacks_each_slices_own_noise(tiny_spec, tiny_batch, monkeypatch):
    """After T the generator step finds, for every slice, the x'(φ) the reranker step drew for it
    (gen_encoding=cached): no fresh draw, and nothing left behind."""
    from benchmark import registry

    torch.manual_seed(0)
    model = registry.build("dnr-b", tiny_spec, switch_epoch=0)
    model.epoch_begin(1)
    calls = []
    original = model.synthesise
    monkeypatch.setattr(model, "synthesise", lambda *a, **k: calls.append(1) or original(*a, **k))
    parts = _one_step(model, tiny_batch, 25)
    assert len(calls) == 3 and model._shared == {}  # three reranker-step draws, none in the generator step
    assert set(parts) == {"reranker", "generator"} and torch.isfinite(parts["generator"]["adversarial"])


def test_micro_batched_fit_is_deterministic(tiny_spec, splits):
    from benchmark import registry

    def prm_run():
        seed_everything(0)
        model = registry.build("prm", tiny_spec, hidden=16)
        cfg = TrainConfig(batch_size=128, max_epochs=2, patience=2, min_patience_steps=0)
        return fit(model, splits["train"], splits["val"], splits["test"], cfg, seed=0, k=6, micro_batch=48)

    first, second = prm_run(), prm_run()
    assert first.test == second.test and np.isfinite(first.history[-1]["train_loss"]["model"]["loss"])
