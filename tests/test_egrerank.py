"""EGRerank (methods.md §4.1) on real ml-100k lists: the two training phases and the score switch,
the pointer decode and its masking, the rollout's log-probabilities and the PPO pieces by hand,
the generator learning on a fixed evaluator, and the evaluator's random slates."""
from __future__ import annotations

import dataclasses
import io
import math

import pytest
import torch

from baselines.blocks import logged_slate
from baselines.egrerank import discounted_returns, ppo_objective, standardised_advantages
from benchmark import registry
from benchmark.api import DataSpec
from benchmark.batches import SplitTensors
from benchmark.config import TrainConfig
from benchmark.errors import ConfigError
from benchmark.trainer import fit, seed_everything
from helpers import build, scores


def params(module):
    return {name: p.detach().clone() for name, p in module.named_parameters()}


def same(a, b):
    return all(torch.equal(a[n], b[n]) for n in a)


def any_changed(a, b):
    return any(not torch.equal(a[n], b[n]) for n in a)


# --- the two phases ---------------------------------------------------------------------------------

def test_stages_train_in_order_and_score_switches_source(tiny_lists, tiny_spec, tiny_batch):
    splits = {"train": SplitTensors.of(tiny_lists, "train", limit=256), "val": SplitTensors.of(tiny_lists, "val"),
              "test": SplitTensors.of(tiny_lists, "test")}
    seed_everything(0)
    model = registry.build("egrerank", tiny_spec)
    snap = {"eval0": params(model.evaluator), "gen0": params(model.generator)}
    original = model.stages

    def stages():  # snapshot the model between the phases, just before the generator phase starts
        out = original()
        start = out[1].on_start

        def hook():
            snap.update(eval1=params(model.evaluator), gen1=params(model.generator), phase1=int(model.phase))
            model.eval()
            with torch.no_grad():
                snap.update(score1=model.score(tiny_batch), evaluator1=model.evaluator_scores(tiny_batch))
            start()

        out[1].on_start = hook
        return out

    model.stages = stages
    result = fit(model, splits["train"], splits["val"], splits["test"],
                 TrainConfig(batch_size=128, max_epochs=2, patience=2), seed=0, k=6)
    assert [h["stage"] for h in result.history] == ["evaluator", "evaluator", "generator", "generator"]
    # the evaluator (with its item table and user encoder) moves in phase one only, the generator in phase two only
    assert any_changed(snap["eval0"], snap["eval1"]) and same(snap["gen0"], snap["gen1"])
    assert same(snap["eval1"], params(model.evaluator)) and any_changed(snap["gen1"], params(model.generator))
    # phase one scores are the evaluator's; after phase two, the greedy decode's
    assert snap["phase1"] == 0 and int(model.phase) == 1
    assert torch.equal(snap["score1"], snap["evaluator1"])
    model.eval()
    out = scores(model, tiny_batch)
    with torch.no_grad():
        order, _ = model.greedy(tiny_batch)
        evaluator_now = model.evaluator_scores(tiny_batch)
    assert torch.equal(torch.argsort(out, dim=1, descending=True, stable=True)[:, :6], order)
    assert not torch.equal(out, evaluator_now)
    assert torch.equal(evaluator_now, snap["evaluator1"])  # the evaluator was frozen
    # the generator's mean reward is in the history of its phase, and only there
    assert all(("generator_reward" in h) == (h["stage"] == "generator") for h in result.history)
    assert all(0.0 < h["generator_reward"] < 1.0 for h in result.history if h["stage"] == "generator")


def test_a_run_interrupted_in_the_generator_phase_resumes_to_the_same_result(tiny_lists, tiny_spec, tmp_path):
    splits = [SplitTensors.of(tiny_lists, "train", limit=128), SplitTensors.of(tiny_lists, "val"),
              SplitTensors.of(tiny_lists, "test")]
    cfg = TrainConfig(batch_size=64, max_epochs=2, patience=2)
    ckpt = tmp_path / "egrerank.pt"

    def run(interrupt: bool = False):
        seed_everything(0)
        model = registry.build("egrerank", tiny_spec)
        if interrupt:
            def stop(epoch):
                if int(model.phase) == 1 and epoch == 2:
                    raise RuntimeError("interrupted")
            model.epoch_begin = stop
        return fit(model, *splits, cfg, seed=0, k=6, checkpoint=ckpt if interrupt else None, checkpoint_tag="x")

    straight = run()
    with pytest.raises(RuntimeError, match="interrupted"):
        run(interrupt=True)
    seed_everything(7)
    model = registry.build("egrerank", tiny_spec)  # a fresh process: phase 0 until the checkpoint says otherwise
    resumed = fit(model, *splits, cfg, seed=0, k=6, checkpoint=ckpt, checkpoint_tag="x")
    assert resumed.resumed_from_epoch == 3 and int(model.phase) == 1
    assert resumed.test == straight.test


def test_each_stage_steps_its_own_parameters(tiny_spec):
    model = build("egrerank", tiny_spec)
    evaluator, generator = model.stages()
    ids = lambda parameters: {id(p) for p in parameters}  # noqa: E731
    assert ids(evaluator.steps[0].parameters()) == ids(model.evaluator.parameters())
    assert ids(generator.steps[0].parameters()) == ids(model.generator.parameters())
    assert ids(model.evaluator.parameters()) | ids(model.generator.parameters()) == ids(model.parameters())
    assert not ids(model.evaluator.parameters()) & ids(model.generator.parameters())


def test_scores_do_not_depend_on_the_candidate_order(tiny_spec, tiny_batch):
    """Neither the evaluator's single-position score nor the pointer decode reads the initial order
    (only exact ties among the unchosen fall back to it, in ``order_scores``)."""
    model = build("egrerank", tiny_spec)
    perm = torch.randperm(50, generator=torch.Generator().manual_seed(1))
    permuted = dataclasses.replace(tiny_batch, **{f: getattr(tiny_batch, f)[:, perm]
                                                  for f in ("items", "scores", "labels", "mask", "exposed")})
    assert torch.allclose(scores(model, permuted), scores(model, tiny_batch)[:, perm], atol=1e-5)
    with torch.no_grad():
        order, first = model.greedy(tiny_batch)
        order_p, first_p = model.greedy(permuted)
    assert torch.equal(perm[order_p], order) and torch.allclose(first_p, first[:, perm], atol=1e-5)


def test_phase_survives_a_state_dict_round_trip(tiny_spec, tiny_batch):
    model = build("egrerank", tiny_spec)
    evaluator_scores = scores(model, tiny_batch)
    model.stages()[1].on_start()
    generator_scores = scores(model, tiny_batch)
    assert not torch.equal(evaluator_scores, generator_scores)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    fresh = build("egrerank", tiny_spec)
    fresh.generator.start.data.normal_()  # make sure the loaded state, not the seed, decides
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    assert int(fresh.phase) == 1 and torch.equal(scores(fresh, tiny_batch), generator_scores)
    fresh.stages()[0].on_start()
    assert torch.equal(scores(fresh, tiny_batch), evaluator_scores)


# --- the pointer decode -----------------------------------------------------------------------------

def test_greedy_decode_never_repeats_or_picks_a_padded_candidate(tiny_spec, tiny_batch):
    model = build("egrerank", tiny_spec)
    model.set_phase(1)
    with torch.no_grad():
        first, _ = model.greedy(tiny_batch)
    # pad what the decode picked on the full lists, plus every third column (items unchanged, so
    # only the mask keeps the decode from picking the same columns again)
    mask = tiny_batch.mask.clone()
    mask.scatter_(1, first, False)
    mask[:, ::3] = False
    mask[0, 6:] = False  # a short list: 4 real candidates (1, 2, 4, 5)
    batch = dataclasses.replace(tiny_batch, mask=mask)
    with torch.no_grad():
        order, _ = model.greedy(batch)
    assert all(len(set(row.tolist())) == 6 for row in order)
    assert mask[1:].gather(1, order[1:]).all()
    real = sorted(c for c in (1, 2, 4, 5) if mask[0, c])  # those the first decode did not take
    assert real and sorted(order[0, :len(real)].tolist()) == real  # the real candidates come first
    out = scores(model, batch)
    assert torch.isneginf(out[~mask]).all() and torch.isfinite(out[mask]).all()
    assert torch.equal(torch.argsort(out[1:], dim=1, descending=True, stable=True)[:, :6], order[1:])


def _unit_model(**hparams):
    spec = DataSpec("unit", n_users=4, n_items=10, list_len=5, history_len=3, k=3)
    torch.manual_seed(0)
    return registry.build("egrerank", spec, hidden=8, **hparams)


def test_rollout_log_probabilities_by_hand():
    gen = _unit_model().generator
    torch.manual_seed(1)
    u = torch.randn(2, 5, 8)
    mask = torch.tensor([[True] * 5, [True, False, True, True, False]])
    torch.manual_seed(2)
    with torch.no_grad():
        roll = gen.decode(u, mask, steps=3, rollouts=4, mode="sample")
    cell = gen.cell
    for b in range(2):
        for r in range(4):
            h, c, x = torch.zeros(8), torch.zeros(8), gen.start.detach()
            allowed = mask[b].clone()
            for k in range(3):
                gates = cell.weight_ih @ x + cell.bias_ih + cell.weight_hh @ h + cell.bias_hh
                i, f, g, o = gates.chunk(4)
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                h = torch.sigmoid(o) * torch.tanh(c)
                hid = torch.relu(u[b] @ gen.cand_proj.weight.T + gen.cand_proj.bias + gen.state_proj.weight @ h)
                logits = (hid @ gen.out.weight.T).squeeze(-1) + gen.out.bias
                p = torch.softmax(logits[allowed], dim=0)
                a = int(roll.actions[b, r, k])
                assert allowed[a], "picked a chosen or padded candidate"
                p_a = p[int(allowed[:a].sum())]
                assert roll.logp[b, r, k].item() == pytest.approx(torch.log(p_a).item(), abs=1e-5)
                assert roll.entropy[b, r, k].item() == pytest.approx(-(p * p.log()).sum().item(), abs=1e-5)
                allowed[a] = False
                x = u[b, a]
    # recomputing the sampled actions' log-probabilities (teacher forcing) gives the same values
    again = gen.decode(u, mask, steps=3, actions=roll.actions)
    assert torch.allclose(again.logp, roll.logp, atol=1e-6) and again.logp.requires_grad


def test_uniform_exploration_ignores_the_policy():
    a, b = _unit_model().generator, _unit_model().generator
    torch.nn.init.normal_(b.out.weight, std=10.0)  # another policy
    u = torch.randn(3, 5, 8)
    mask = torch.ones(3, 5, dtype=torch.bool)

    def actions(gen, mode):
        torch.manual_seed(5)
        with torch.no_grad():
            return gen.decode(u, mask, steps=3, rollouts=8, mode=mode).actions

    assert torch.equal(actions(a, "uniform"), actions(b, "uniform"))
    assert not torch.equal(actions(a, "sample"), actions(b, "sample"))


@pytest.mark.parametrize("explore, low, high", [(0.0, 0, 0), (1.0, 20, 20), (0.5, 4, 16)])
def test_exploration_is_drawn_once_per_batch(tiny_spec, tiny_batch, explore, low, high):
    model = build("egrerank", tiny_spec, explore=explore, rep_num=2)
    small = dataclasses.replace(tiny_batch, **{f.name: getattr(tiny_batch, f.name)[:4]
                                               for f in dataclasses.fields(tiny_batch)})
    model.epoch_begin(1)
    torch.manual_seed(0)
    with torch.no_grad():
        for _ in range(20):
            model.generator_loss(small)
    assert low <= model.epoch_log()["generator_explore_batches"] <= high


# --- PPO pieces -------------------------------------------------------------------------------------

def test_returns_and_standardised_advantages_by_hand():
    rewards = torch.tensor([[[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [0.5, 0.5, 0.5]]])  # 1 request, 3 rollouts
    returns = discounted_returns(rewards, 0.5)
    assert torch.allclose(returns[0], torch.tensor([[1.25, 0.5, 1.0], [0.5, 1.0, 0.0], [0.875, 0.75, 0.5]]))
    adv = standardised_advantages(rewards, 0.5)
    assert torch.allclose(adv.mean(dim=1), torch.zeros(1, 3), atol=1e-6)
    assert torch.allclose(adv.std(dim=1, unbiased=False), torch.ones(1, 3), atol=1e-5)
    column = returns[0, :, 0]
    assert torch.allclose(adv[0, :, 0], (column - column.mean()) / column.std(unbiased=False))
    # identical rollouts carry no signal: advantage 0, not NaN
    assert torch.equal(standardised_advantages(torch.ones(2, 4, 3), 0.01), torch.zeros(2, 4, 3))


def test_ppo_clipped_objective_by_hand():
    logp = torch.log(torch.tensor([1.5, 0.5, 0.5, 1.5, 1.05])).requires_grad_()
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0, 2.0])
    out = ppo_objective(logp, torch.zeros(5), adv, clip=0.1)
    assert torch.allclose(out, torch.tensor([1.1, 0.5, -0.9, -1.5, 2.1]))
    out.sum().backward()
    # the clipped terms carry no gradient; the others d(rho A)/d logp = rho A
    assert torch.allclose(logp.grad, torch.tensor([0.0, 0.5, 0.0, -1.5, 2.1]))


def test_generator_learns_on_a_fixed_evaluator(tiny_spec, tiny_batch):
    model = build("egrerank", tiny_spec, explore=0.0).train()
    step = torch.optim.Adam(model.evaluator.parameters(), lr=1e-2)
    for _ in range(15):  # a fixed evaluator that means something on this batch
        step.zero_grad()
        sum(model.evaluator_loss(tiny_batch).values()).backward()
        step.step()
    model.set_phase(1)
    frozen = params(model.evaluator)

    def greedy_reward():
        model.eval()
        with torch.no_grad():
            order, _ = model.greedy(tiny_batch)
            x = model.evaluator.inputs(tiny_batch)
            return model.slate_rewards(x, order[:, None, :]).mean().item()

    before = greedy_reward()
    optim = torch.optim.Adam(model.generator.parameters(), lr=3e-3)
    model.epoch_begin(1)
    torch.manual_seed(0)
    for _ in range(12):
        model.train()
        optim.zero_grad()
        sum(model.generator_loss(tiny_batch).values()).backward()
        optim.step()
    after = greedy_reward()
    assert after > before + 0.05, (before, after)
    assert same(frozen, params(model.evaluator))


# --- the evaluator's training slates ----------------------------------------------------------------

def test_evaluator_sees_random_slates_with_fillers(tiny_spec, tiny_batch):
    """Items that are only ever fillers in this batch get gradient only from the random slates."""
    columns, _ = logged_slate(tiny_batch, 6)
    seen = set(tiny_batch.items.gather(1, columns).flatten().tolist()) | set(tiny_batch.hist_items.flatten().tolist())
    fillers = sorted(set(tiny_batch.items[tiny_batch.mask].tolist()) - seen)
    assert len(fillers) > 20

    def filler_grad(n):
        model = build("egrerank", tiny_spec, n_random_slates=n).train()
        torch.manual_seed(0)
        parts = model.evaluator_loss(tiny_batch)
        sum(parts.values()).backward()
        return set(parts), model.evaluator.items.weight.grad[fillers].abs().sum(dim=1)

    parts, grad = filler_grad(0)
    assert parts == {"logged"} and (grad == 0).all()
    parts, grad = filler_grad(2)
    assert parts == {"logged", "random"} and (grad > 0).float().mean() > 0.5


def test_random_slates_are_distinct_real_candidates(tiny_spec):
    model = build("egrerank", tiny_spec, n_random_slates=3)
    mask = torch.ones(4, 50, dtype=torch.bool)
    mask[:, 40:] = False
    mask[3, 7:] = False  # exactly 7 real candidates
    torch.manual_seed(0)
    slates = model.random_slates(mask)
    assert slates.shape == (4, 3, 6)
    assert all(len(set(s.tolist())) == 6 for s in slates.flatten(0, 1))
    assert mask.gather(1, slates.flatten(1)).all()
    # random order: the slate is not sorted by column
    assert any(s.tolist() != sorted(s.tolist()) for s in slates.flatten(0, 1))


def test_item_reward_is_the_alone_click_probability_with_dcg_weights(tiny_spec, tiny_batch):
    """``reward="item"``: r_k = sigmoid(alone logit of c_k) / log2(k + 2), whatever else is in the
    slate; ``reward="slate"`` reads the slate in order, so its r_k moves with the earlier items."""
    item, slate = build("egrerank", tiny_spec), build("egrerank", tiny_spec, reward="slate")
    slate.load_state_dict(item.state_dict())
    with torch.no_grad():
        x = item.evaluator.eval().inputs(tiny_batch)
        alone = torch.sigmoid(item.evaluator.alone_logits(x))
    actions = torch.stack([torch.arange(6), torch.tensor([7, 8, 9, 3, 4, 5])])        # [2 rollouts, K]
    actions = actions.expand(x.shape[0], -1, -1)
    got = item.slate_rewards(x, actions)
    dcg = torch.tensor([1.0 / math.log2(k + 2) for k in range(6)])  # written out, not dcg_weights
    assert torch.allclose(got, alone[:, None, :].expand(-1, 2, -1).gather(2, actions) * dcg, atol=1e-6)
    # items 3, 4, 5 sit at positions 3-5 in both rollouts, after different items: same item reward,
    assert torch.allclose(got[:, 0, 3:] / dcg[3:], got[:, 1, 3:] / dcg[3:], atol=1e-6)
    # but a different slate reward, because the GRU read other items before them
    in_context = slate.slate_rewards(x, actions)
    assert not torch.allclose(in_context[:, 0, 3:], in_context[:, 1, 3:], atol=1e-4)


# --- settings ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("hparams", [
    {"rep_num": 1}, {"n_random_slates": -1}, {"reward_gamma": 1.5}, {"reward_gamma": -0.1}, {"clip": 0.0},
    {"clip": 1.0}, {"entropy_weight": -1e-3}, {"explore": 1.2}, {"explore": -0.1}, {"dropout": 1.0},
    {"evaluator_mlp": "200-x"}, {"hidden": 30}, {"reward": "dcg"}])
def test_bad_settings_raise(tiny_spec, hparams):
    with pytest.raises(ConfigError):
        registry.build("egrerank", tiny_spec, **hparams)


def test_registered_with_its_family_and_group():
    entry = registry.get("egrerank")
    assert entry.family == "generator-evaluator" and "baselines" in entry.groups
    assert entry.cls.rank_derived_auc
    hp = entry.hyperparameters()
    assert hp["rep_num"] == 5 and hp["clip"] == 0.1 and hp["reward_gamma"] == 0.01 and hp["explore"] == 0.2
    assert hp["reward"] == "item"
    assert not {"alpha", "lam", "switch_epoch"} & set(hp) and {"dropout", "hidden"} <= set(hp)
