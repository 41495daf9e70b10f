"""`trqam metaworld`: a MetaWorld task end to end with a LeRobot VLA, per task and seed, resumable stage by stage.

``trqam metaworld --task push-v3 --seed 0`` runs data → ``lerobot-train`` prior → offline → online → SDK evaluation +
``lerobot-eval`` for the prior (``bc``) and every method of the recipe (``--methods`` to choose), printing one
result line each; re-running skips what is finished. ``trqam aggregate --benchmark metaworld --runs runs/metaworld``
tabulates the result files.
"""

from __future__ import annotations

import argparse

from trqam_sdk.cli.args import add_methods_argument, add_recipe_arguments, check_out_dir, int_at_least, recipe_overrides


def add_arguments(p: argparse.ArgumentParser) -> None:
    a = p.add_argument
    a("--recipe", default="metaworld", help="a recipe name in recipes/metaworld or a YAML path")
    a("--profile", default="cpu", help="recipe profile: cpu (2 CPU cores), gpu, test (seconds)")
    a("--task", default=None, help="MetaWorld v3 task (e.g. push-v3, drawer-open-v3); default: the recipe's")
    a("--seed", type=int_at_least(0), action="append", default=None,
      help="fine-tuning / evaluation seed (repeatable; default: the recipe's seeds)")
    add_methods_argument(p, None, "the recipe's methods (bc = evaluate the prior)")
    a("--reward", default=None, help="reward source (env, sparse, classifier or a registered one); default: the "
                                     "recipe's")
    a("--out", default="runs/metaworld", help="results root")
    add_recipe_arguments(p)
    a("--no-progress", action="store_true", help="no tqdm bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from trqam_sdk.benchmarks.metaworld.pipeline import run_metaworld
    from trqam_sdk.benchmarks.metaworld.recipe import metaworld_recipe
    from trqam_sdk.benchmarks.sweep import describe, expand_methods
    from trqam_sdk.strict_yaml import deep_merge

    check_out_dir(args.out, "--out")
    extra: dict = {}
    if args.task is not None:
        extra["task"] = args.task
    if args.reward is not None:
        extra["reward"] = {"source": args.reward}
    recipe = metaworld_recipe(args.recipe, args.profile, deep_merge(recipe_overrides(args), extra))
    methods = expand_methods(args.methods) or recipe.methods
    seeds = args.seed if args.seed is not None else recipe.seeds
    for m in methods:  # every name and option checked before any work (finetune_config parses the options)
        if m != "bc":
            recipe.finetune_config(m, seeds[0], "")
    for seed in seeds:
        for method in methods:
            res = run_metaworld(recipe, method, seed, args.out, args.profile, not args.no_progress)
            extra_txt = ""
            if res.get("lerobot_eval"):
                le = res["lerobot_eval"]
                extra_txt = f"  lerobot-eval {100 * le['success_rate']:.1f}% ({int(le['episodes'])} episodes)"
            print(f"RESULT metaworld {res['domain']} {method} seed {seed}: {describe(res)}{extra_txt}")
    return 0
