"""How PIER's evaluator choice was checked (NOTES, "PIER's OCPM trains on generated lists").

Reads a PIER training checkpoint (``results/runs/<dataset>/pier/seed<s>.ckpt``; git-ignored, and
deleted when the run finishes, so this needs a run in flight) and, on the first ``--requests``
validation requests, generates 32 lists per request exactly as PIER's inference does. It prints
the within-request correlations of OCPM's list value with each list's clicks, DCG and mean initial
position, and the mean DCG (unnormalised, gains 1/log2(slot+1)) of the greedy top 6, of OCPM's best
among the 32, of PIER's displayed list (FPSM keeps 8, OCPM picks) and of the retriever's first six,
plus how often FPSM keeps only the first 8 generated lists.

    PYTHONPATH=. python results/checks/pier-evaluator/check.py --dataset kuairand \
        --checkpoint results/runs/kuairand/pier/seed0.ckpt [--state best|last] [--requests 4000]

``ocpm_logged`` changes what OCPM trains on, not its weights, so a checkpoint of either kind loads.
"""
from __future__ import annotations

import argparse

import torch

from baselines.pier import plackett_luce_permutations
from benchmark import registry
from benchmark.batches import SplitTensors, data_spec
from benchmark.config import resolve_run_config
from benchmark.data import build_candidate_lists


def within_corr(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return float((a * b).sum() / (a.norm() * b.norm()))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--dataset", required=True)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--state", choices=("best", "last"), default="best")
    p.add_argument("--requests", type=int, default=4000)
    args = p.parse_args()
    cfg = resolve_run_config(args.dataset, "pier", "paper", {})
    lists, _ = build_candidate_lists(args.dataset, overrides=cfg.data.to_dict(), progress=False)
    val = SplitTensors.of(lists, "val")
    model = registry.build("pier", data_spec(lists), **cfg.model)
    ckpt = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
    model.load_state_dict(ckpt["best_state"] if args.state == "best" else ckpt["model"])
    model.eval()
    print(f"checkpoint epoch {ckpt['epoch']}, best epoch {ckpt['best_epoch']} (validation N@6 {ckpt['best_value']:.4f}); "
          f"using the {args.state} state")
    batch = val.batch(torch.arange(min(len(val), args.requests)))
    gain = 1 / torch.log2(torch.arange(2, 2 + model.k).float())

    def dcg(perms: torch.Tensor) -> torch.Tensor:
        return (batch.labels.gather(1, perms.flatten(1)).view_as(perms).float() * gain).sum(-1)

    with torch.no_grad():
        h = model.encode(batch)
        logits = model.head(h)
        perms = plackett_luce_permutations(logits, batch.mask, model.n_perm, model.pool, model.k, model._generator(batch))
        value = model.permutation_value(model.ocpm_logits(batch, model.fused(h, None), perms))
        clicks = batch.labels.gather(1, perms.flatten(1)).view_as(perms).float().sum(-1)
        gains = dcg(perms)
        kept = torch.argsort(model.fpsm_similarity(batch, perms, hard=True), dim=1, descending=True,
                             stable=True)[:, :model.keep]  # FPSM's selection, as PIER.select makes it
        shown = model.rerank(batch, model.k)  # PIER's own inference: the list it displays
        first_six = torch.arange(model.k).expand(len(batch), 1, model.k)
    print(f"requests {len(batch)}, lists per request {perms.shape[1]}")
    print(f"within-request corr of OCPM value with clicks {within_corr(value, clicks):+.3f}, DCG "
          f"{within_corr(value, gains):+.3f}, mean initial position {within_corr(value, perms.float().mean(-1)):+.3f}")
    print(f"DCG: greedy top 6 {gains[:, 0].mean():.4f}, OCPM best of {perms.shape[1]} "
          f"{gains.gather(1, value.argmax(1, keepdim=True)).mean():.4f}, displayed {dcg(shown[:, None]).mean():.4f}, "
          f"retriever's first six {dcg(first_six).mean():.4f}")
    print(f"displayed list is the greedy one for {(shown == perms[:, 0]).all(1).float().mean():.3f} of requests; "
          f"share of kept lists among the first {model.keep} generated {(kept < model.keep).float().mean():.3f}")


if __name__ == "__main__":
    main()
