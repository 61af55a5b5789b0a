"""DNR: heuristic noise, the learned generator, the two training steps around T, logs, determinism."""
from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from benchmark import registry
from benchmark.errors import ConfigError
from dnr.model import DNR
from dnr.noise import HIST_BINS, HeuristicNoise, NoiseGenerator, implied_noise, mix, score_divergence

SMALL = {"hidden": 16, "n_layers": 1, "gen_hidden": 16, "dropout": 0.1}
T = 2


def build(slug: str = "dnr-b", spec=None, **overrides) -> DNR:
    return registry.build(slug, spec, **{**SMALL, "switch_epoch": T, **overrides})


def run_epochs(model: DNR, batch, epochs, optims=None, on_step=None):
    """Drive the steps as the trainer does: per batch and active step, zero grads, loss, backward, Adam
    over that step's parameters only. ``on_step(epoch, step, parts)`` sees every step's loss parts."""
    steps = model.stages()[0].steps
    optims = optims or [torch.optim.Adam(list(s.parameters()), lr=1e-2) for s in steps]
    for epoch in epochs:
        model.train()
        model.epoch_begin(epoch)
        for step, opt in zip(steps, optims):
            if not step.active(epoch):
                continue
            model.zero_grad(set_to_none=True)
            parts = step.loss(batch)
            sum(parts.values()).backward()
            opt.step()
            if on_step is not None:
                on_step(epoch, step, parts)
    return optims


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before: dict, module: torch.nn.Module) -> bool:
    return any(not torch.equal(before[k], v) for k, v in module.state_dict().items())


# ------------------------------------------------------------------------------ heuristic noise
def test_u_shaped_beta_puts_its_mass_near_zero_and_one():
    torch.manual_seed(0)
    eps = HeuristicNoise("beta", 0.5, 0.5).sample(torch.Size([100_000]), torch.zeros(1))
    assert eps.min() >= 0 and eps.max() <= 1
    hist = torch.histc(eps, bins=10, min=0, max=1) / eps.numel()
    # Beta(0.5, 0.5) CDF: (2/pi) asin(sqrt(t)) -> 0.205 in each outer tenth, 0.064 in each middle one
    assert hist[0] == pytest.approx(0.205, abs=0.01) and hist[-1] == pytest.approx(0.205, abs=0.01)
    assert hist[4] == pytest.approx(0.064, abs=0.01) and hist[0] > 3 * hist[4]
    assert eps.mean() == pytest.approx(0.5, abs=0.01)


def test_beta_2_5_and_gaussian_moments():
    torch.manual_seed(0)
    like = torch.zeros(1)
    beta = HeuristicNoise("beta", 2, 5).sample(torch.Size([100_000]), like)
    assert beta.mean() == pytest.approx(2 / 7, abs=0.005)
    assert beta.std() == pytest.approx(math.sqrt(10 / (49 * 8)), abs=0.005)
    gauss = HeuristicNoise("gaussian").sample(torch.Size([100_000]), like)
    assert gauss.mean() == pytest.approx(0.0, abs=0.01) and gauss.std() == pytest.approx(1.0, abs=0.01)
    # the learned generator's starting point: the heuristic's mean on (0, 1)
    assert HeuristicNoise("gaussian").clamped_mean() == pytest.approx(float(gauss.clamp(0, 1).mean()), abs=0.01)
    assert HeuristicNoise("beta", 2, 5).clamped_mean() == pytest.approx(2 / 7)


def test_heuristic_synthesis_follows_eq4_and_conjugate_posterior_is_a_flag():
    torch.manual_seed(0)
    z = (torch.rand(64, 50) < 0.2).float()
    eps, x_syn = HeuristicNoise("beta", 0.5, 0.5).synthesise(z, 0.4)
    assert torch.allclose(x_syn, 0.6 * z + 0.4 * eps)
    assert torch.allclose(implied_noise(x_syn, z, 0.4), eps, atol=1e-6)
    eps, x_syn = HeuristicNoise("beta", 0.5, 0.5, posterior="conjugate").synthesise(z, 0.4)
    assert torch.allclose(mix(z, eps, 0.4), x_syn, atol=1e-6)
    assert x_syn[z == 1].mean() > 0.6 > 0.4 > x_syn[z == 0].mean()  # Beta(1.5, .5) vs Beta(.5, 1.5)
    with pytest.raises(ConfigError):
        HeuristicNoise("gaussian", posterior="conjugate")


def test_gaussian_synthetic_scores_are_clamped_unless_asked_not_to(tiny_spec, tiny_batch):
    torch.manual_seed(0)
    eps, x_syn = build("dnr-g", tiny_spec).synthesise(tiny_batch)
    assert x_syn.min() == 0 and x_syn.max() == 1  # N(0, 1) noise leaves [0, 1] in both directions
    assert torch.equal(x_syn, mix(tiny_batch.labels, eps, 0.4).clamp(0, 1))
    eps, x_syn = build("dnr-g", tiny_spec, score_range="none").synthesise(tiny_batch)
    assert x_syn.min() < 0 and x_syn.max() > 1 and torch.allclose(x_syn, mix(tiny_batch.labels, eps, 0.4))
    _, x_syn = build("dnr-g", tiny_spec, score_range="minmax").synthesise(tiny_batch)
    assert torch.allclose(x_syn.amin(dim=1), torch.zeros(64)) and torch.allclose(x_syn.amax(dim=1), torch.ones(64))


# ------------------------------------------------------------------------------ generator and L_x
def test_generator_starts_at_the_heuristic_mean_and_is_stochastic_through_eta():
    torch.manual_seed(0)
    gen = NoiseGenerator(8, 8, 16, 4, init_mean=2 / 7)
    user, items, z = torch.randn(3, 8), torch.randn(3, 5, 8), torch.ones(3, 5)
    assert torch.allclose(gen(user, items, z), torch.full((3, 5), 2 / 7))
    with torch.no_grad():
        gen.out.weight.normal_()
    eps_a, eps_b = gen(user, items, z), gen(user, items, z)
    assert ((eps_a > 0) & (eps_a < 1)).all() and not torch.equal(eps_a, eps_b)
    # without input noise: exactly the 2-layer MLP on the concatenation [h_u; e_i; z_i]
    gen = NoiseGenerator(8, 8, 16, 0, init_mean=0.5)
    with torch.no_grad():
        gen.out.weight.normal_()
    inputs = torch.cat([user[:, None].expand(-1, 5, -1), items, z[..., None]], dim=-1)
    assert torch.allclose(gen(user, items, z), torch.sigmoid(gen.out(torch.relu(gen.first(inputs)))).squeeze(-1),
                          atol=1e-6)


def test_score_divergences():
    torch.manual_seed(0)
    x, x_syn = torch.rand(4, 10), torch.rand(4, 10)
    mask = torch.ones(4, 10, dtype=torch.bool)
    mask[0, 7:] = False
    # option 1 written out = KL(softmax(x'/tau) || softmax(x/tau)) in the paper's direction
    p_syn, p = torch.softmax(x_syn[1:] / 0.5, 1), torch.softmax(x[1:] / 0.5, 1)
    assert float(score_divergence(x_syn[1:], x[1:], mask[1:], "kl", 0.5)) == pytest.approx(
        float((p_syn * (p_syn / p).log()).sum(1).mean()), rel=1e-5)
    for form in ("kl", "bernoulli", "wasserstein"):
        assert float(score_divergence(x, x, mask, form)) == pytest.approx(0.0, abs=1e-6)
        assert float(score_divergence(x_syn, x, mask, form)) > 0
    # padded slots are ignored; W1 ignores the order of the candidates
    noisy = x_syn.clone()
    noisy[0, 7:] = 9.0
    assert torch.allclose(score_divergence(noisy, x, mask, "kl"), score_divergence(x_syn, x, mask, "kl"))
    assert float(score_divergence(x.flip(1), x, torch.ones_like(mask), "wasserstein")) == pytest.approx(0.0, abs=1e-7)


# ------------------------------------------------------------------------------ steps around T
def test_stages_schedule_the_generator_after_T(tiny_spec):
    stage, = build(spec=tiny_spec).stages()
    assert [s.name for s in stage.steps] == ["reranker", "generator"]
    generator = stage.steps[1]
    assert not generator.active(1) and not generator.active(T) and generator.active(T + 1)
    assert stage.steps[0].active(1) and stage.min_epochs >= T + 1
    heuristic, = build("dnr-b-heuristic", tiny_spec).stages()
    assert [s.name for s in heuristic.steps] == ["reranker"] and heuristic.min_epochs == 0
    assert build("dnr-b-heuristic", tiny_spec).generator is None


def test_two_steps_by_hand_across_T(tiny_spec, tiny_batch):
    torch.manual_seed(0)
    model = build(spec=tiny_spec)
    start_gen, start_rer = snapshot(model.generator), snapshot(model.backbone)
    seen: dict[tuple[int, str], dict[str, float]] = {}

    def check(epoch, step, parts):
        assert all(torch.isfinite(v) for v in parts.values())
        seen[epoch, step.name] = {k: float(v.detach()) for k, v in parts.items()}

    optims = run_epochs(model, tiny_batch, range(1, T + 1), on_step=check)
    assert not changed(start_gen, model.generator) and changed(start_rer, model.backbone)
    assert model.epoch_log()["noise"]["generator"] == "heuristic"
    assert set(seen) == {(e, "reranker") for e in range(1, T + 1)}

    # after T, step by step: each step moves only its own parameters
    model.epoch_begin(T + 1)
    reranker_step, generator_step = model.stages()[0].steps
    for step, opt, own, other in ((reranker_step, optims[0], model.backbone, model.generator),
                                  (generator_step, optims[1], model.generator, model.backbone)):
        before_own, before_other = snapshot(own), snapshot(other)
        model.zero_grad(set_to_none=True)
        parts = step.loss(tiny_batch)
        sum(parts.values()).backward()
        opt.step()
        check(T + 1, step, parts)
        assert changed(before_own, own) and not changed(before_other, other)
    assert set(seen[T + 1, "generator"]) == {"adversarial", "regulariser"}
    assert model.epoch_log()["noise"]["generator"] == "learned"

    run_epochs(model, tiny_batch, range(T + 2, T + 4), optims, on_step=check)
    assert seen[T + 3, "generator"] != seen[T + 1, "generator"]
    assert seen[T + 3, "reranker"]["direct"] < seen[1, "reranker"]["direct"]


@pytest.mark.parametrize("slug, parts", [("dnr-b-no-adv", {"regulariser"}), ("dnr-g-no-reg", {"adversarial"}),
                                         ("dnr-g", {"adversarial", "regulariser"})])
def test_ablation_flags_remove_their_terms(tiny_spec, tiny_batch, slug, parts):
    torch.manual_seed(0)
    model = build(slug, tiny_spec)
    model.epoch_begin(T + 1)
    assert set(model.loss(tiny_batch)) == {"direct", "augmented"}
    assert set(model.generator_loss(tiny_batch)) == parts
    log = model.epoch_log()["noise"]
    assert ("loss_adversarial_bce" in log) == ("adversarial" in parts)
    assert ("loss_regulariser" in log) == ("regulariser" in parts)
    with pytest.raises(ConfigError):
        build(slug, tiny_spec, adversarial=False, regulariser=False)


def test_encoder_runs_once_per_batch_under_late_injection(tiny_spec, tiny_batch, monkeypatch):
    calls = {"encode": 0, "context": 0}

    def count(model):
        for name in calls:
            method = getattr(model.backbone, name)
            monkeypatch.setattr(model.backbone, name, lambda *a, _m=method, _n=name, **k: calls.__setitem__(
                _n, calls[_n] + 1) or _m(*a, **k))
        return model

    def step_calls(model, epoch, loss):
        model.epoch_begin(epoch)
        calls.update(encode=0, context=0)
        model.loss(tiny_batch)
        if loss == "generator":
            calls.update(encode=0, context=0)
            model.generator_loss(tiny_batch)
        return dict(calls)

    torch.manual_seed(0)
    model = count(build(spec=tiny_spec))
    before = step_calls(model, 1, "reranker")
    assert before["encode"] == 1
    # after T: f_φ reads the detached user/item context of the reranker step's own encoder pass (no
    # extra backbone pass); the generator step reuses this batch's encoder output and x'(φ)
    # ("cached"), or encodes once more without gradients ("fresh")
    assert step_calls(model, T + 1, "reranker") == {"encode": 1, "context": before["context"]}
    assert step_calls(model, T + 1, "generator") == {"encode": 0, "context": 0}
    model.gen_encoding = "fresh"
    assert step_calls(model, T + 1, "generator")["encode"] == 1
    # gen_input="encoded" conditions f_φ on the encoder output instead: no extra backbone pass at all
    encoded = count(build(spec=tiny_spec, gen_input="encoded"))
    assert step_calls(encoded, T + 1, "reranker") == before
    assert set(encoded.generator_loss(tiny_batch)) == {"adversarial", "regulariser"}
    with pytest.raises(ConfigError):
        build(spec=tiny_spec, gen_input="encoded", injection="plus")


def test_input_level_injection_runs_the_encoder_per_score(tiny_spec, tiny_batch):
    torch.manual_seed(0)
    model = build(spec=tiny_spec, injection="plus")
    run_epochs(model, tiny_batch, range(1, T + 2))
    model.eval()
    shifted = dataclasses.replace(tiny_batch, scores=tiny_batch.scores.flip(1))
    assert not torch.allclose(model.score(tiny_batch), model.score(shifted))


# ------------------------------------------------------------------------------ inference and state
def test_score_uses_real_scores_and_ignores_the_generator(tiny_spec, tiny_batch):
    torch.manual_seed(0)
    trained = build(spec=tiny_spec)
    run_epochs(trained, tiny_batch, [1])  # the late-fusion weight starts at zero
    trained.eval()
    reference = trained.score(tiny_batch)
    assert reference.shape == tiny_batch.scores.shape and torch.isfinite(reference).all()
    with torch.no_grad():
        for p in trained.generator.parameters():
            p.add_(1.0)
    trained.epoch_begin(T + 1)
    assert torch.equal(trained.score(tiny_batch), reference)
    shifted = dataclasses.replace(tiny_batch, scores=tiny_batch.scores.flip(1))
    assert not torch.allclose(trained.score(shifted), reference)
    padded = dataclasses.replace(tiny_batch, mask=tiny_batch.mask.clone())
    padded.mask[:, -3:] = False
    assert torch.isneginf(trained.score(padded)[:, -3:]).all()


def test_same_seed_same_numbers_and_state_dict_round_trip(tiny_spec, tiny_batch):
    def trained_run():
        torch.manual_seed(7)
        model = build("dnr-g", tiny_spec, switch_epoch=1)
        losses = []
        run_epochs(model, tiny_batch, [1, 2], on_step=lambda e, s, p: losses.append(
            {k: float(v.detach()) for k, v in p.items()}))
        return model.eval(), losses

    (first, losses_a), (second, losses_b) = trained_run(), trained_run()
    assert losses_a == losses_b and torch.equal(first.score(tiny_batch), second.score(tiny_batch))
    fresh = build("dnr-g", tiny_spec).eval()
    fresh.load_state_dict(first.state_dict())
    assert torch.equal(fresh.score(tiny_batch), first.score(tiny_batch))


def test_epoch_log_is_json_and_histograms_count_every_noise_sample(tiny_spec, tiny_batch):
    torch.manual_seed(0)
    model = build("dnr-g", tiny_spec)
    model.epoch_begin(1)
    for _ in range(2):  # two batches in one epoch
        model.loss(tiny_batch)
    log = json.loads(json.dumps(model.epoch_log()))["noise"]
    n = 2 * int(tiny_batch.mask.sum())
    for name in ("eps", "eps_real", "abs_gap"):
        assert len(log[name]["hist"]) == HIST_BINS and sum(log[name]["hist"]) == n == log[name]["n"]
    assert log["generator"] == "heuristic" and log["heuristic"] == "N(0, 1)"
    assert 0 < log["crossed"] < 1  # Gaussian x' crosses 0.5
    assert log["eps"]["mean"] == pytest.approx(0.0, abs=0.1) and log["eps"]["std"] == pytest.approx(1.0, abs=0.1)
    model.epoch_begin(2)  # accumulators restart each epoch
    assert model.epoch_log()["noise"].keys() == {"generator", "heuristic", "alpha", "bins", "range"}
    beta = build(spec=tiny_spec)
    beta.loss(tiny_batch)
    assert beta.epoch_log()["noise"]["crossed"] == 0.0  # Beta noise, alpha <= 0.5: separable (methods.md §6.4)


def test_registered_variants(tiny_spec):
    expected = {"dnr-b": {}, "dnr-g": {"noise": "gaussian"}, "dnr-bl": {"beta_a": 2.0, "beta_b": 5.0},
                "dnr-g-heuristic": {"noise": "gaussian", "learned_generator": False},
                "dnr-b-heuristic": {"learned_generator": False}, "dnr-b-no-adv": {"adversarial": False},
                "dnr-g-no-reg": {"noise": "gaussian", "regulariser": False}, "dnr-large": {"noise": "gaussian", "n_layers": 6}}
    entries = registry.available()
    for slug, overrides in expected.items():
        hp = entries[slug].hyperparameters()
        assert entries[slug].cls is DNR and all(hp[k] == v for k, v in overrides.items()), slug
    assert {s for s, e in entries.items() if "dnr-ablations" in e.groups} == {
        f"dnr-{g}-{a}" for g in "gb" for a in ("heuristic", "no-adv", "no-reg")}
    assert registry.resolve(["dnr"]) == ["dnr-b", "dnr-g", "dnr-bl"]
    large = registry.build("dnr-large", tiny_spec, hidden=16, gen_hidden=16)
    assert len(large.backbone.encoder.layers.layers) == 6
    with pytest.raises(ConfigError):
        build(spec=tiny_spec, injection="sideways")


def test_backbone_args_reach_the_backbone_and_may_not_override_what_dnr_sets(tiny_spec):
    model = build(spec=tiny_spec, backbone_args={"n_heads": 2, "ffn": 24})
    assert build(spec=tiny_spec).backbone.encoder.layers.layers[0].self_attn.num_heads == 4
    layer = model.backbone.encoder.layers.layers[0]
    assert layer.self_attn.num_heads == 2 and layer.linear1.out_features == 24
    with pytest.raises(ConfigError, match="backbone_args may not set .'hidden'"):
        build(spec=tiny_spec, backbone_args={"hidden": 32})
    with pytest.raises(ConfigError, match="no hyper-parameter 'n_head'"):
        build(spec=tiny_spec, backbone_args={"n_head": 2})
