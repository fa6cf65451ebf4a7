"""`peftkit plan`: will a run fit, and how long will it take, before anything is loaded. It takes the flags of
`peftkit train` (task, strategy, model, batch, sequence length, precision, checkpointing) plus its own below."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from peftkit.arguments import one_line_errors
from peftkit.commands.common import guard, setup_logging
from peftkit.commands.train import asked_shots, has_pair_stage
from peftkit.config import FEWSHOT_DEFAULT
from peftkit.errors import PeftkitError, check

ALL = ("full", "partial", "head", "lora", "qlora")  # --strategy all: the strategies the benchmarks compare
SHARDINGS = ("none", "ddp", "fsdp", "zero2", "zero3")


def own_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="peftkit plan", add_help=False, allow_abbrev=False,
        description="Predict a run's peak memory per process (weights by dtype and quantization, gradients, "
        "optimizer state, activations, overhead) from the model's config.json alone, on the meta device: no "
        "weight is loaded, so a directory holding only config.json works, as does catalogue:NAME (e.g. "
        "catalogue:llama-3.1-8b; `--list_catalogue` names them). Says whether it fits and, when not, what would, "
        "cheapest first. With --calibrate, times a few real steps to predict step and run time. Every flag of "
        "`peftkit train` is read too (`peftkit train --task T --strategy S --help` lists them).")
    p.add_argument("--strategy", default=None, help="the strategy to plan, several separated by commas, or 'all' "
                   f"({', '.join(ALL)}). Default: lora; with --shots (text_cls), the few-shot default, full "
                   "--contrastive")
    p.add_argument("--task", default="text_cls", help="the task (default text_cls)")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None,
                   help="plan for this device type (default: a GPU where there is one, else the CPU); planning for "
                   "cuda works on a machine without one, with --memory the GPU's size")
    p.add_argument("--num_processes", type=int, default=None,
                   help="processes (GPUs) the run will use (default: this `accelerate launch`'s, else 1)")
    p.add_argument("--sharding", choices=SHARDINGS, default=None,
                   help="how the processes share the model: ddp (a full copy each), fsdp or zero3 (weights, gradients "
                   "and optimizer state split), zero2 (gradients and optimizer state split). Default: ddp with "
                   "several processes, or what this `accelerate launch` config says")
    p.add_argument("--accelerate_config", default=None,
                   help="an Accelerate config file (as for `accelerate launch --config_file`, e.g. "
                   "recipes/accelerate/fsdp_lora.yaml): its processes, sharding (FSDP, DeepSpeed ZeRO stage, DDP) "
                   "and mixed precision; the flags above override it")
    p.add_argument("--calibrate", action="store_true",
                   help="load the model (its weights, or random ones with --random_init) and time a few training "
                   "steps at shorter lengths on this device, to predict the step time and the run's time")
    p.add_argument("--format", choices=("table", "json"), default="table", help="output format (default table)")
    p.add_argument("--output_file", default=None, help="also write the plan here as JSON")
    p.add_argument("--list_catalogue", action="store_true",
                   help="list the built-in model shapes (catalogue:NAME) with their parameter counts, and exit")
    p.add_argument("--help", "-h", action="store_true", help="show this help and the run's flags")
    return one_line_errors(p)


def add_parser(sub) -> None:
    sub.add_parser("plan", help="predict a run's memory and time before loading anything (see --help)",
                   add_help=False)


def strategies_of(value: str | None) -> list[str]:
    if value is None:
        return ["lora"]
    names = [v.strip() for v in value.split(",") if v.strip()]
    return list(ALL) if names == ["all"] else names


def run(ns, rest: list[str]) -> int:
    own, argv = own_parser().parse_known_args(rest)
    if own.help:
        own_parser().print_help()
        print("\nThe run's flags, as `peftkit train` reads them:")
        from peftkit.arguments import build_train_parser

        build_train_parser(strategies_of(own.strategy)[0], "peftkit plan", own.task)[0].print_help()
        return 0
    if own.list_catalogue:
        from peftkit import catalogue

        for name in catalogue.names():
            print(f"catalogue:{name:<20} {catalogue.published_parameters(name) / 1e9:6.2f}B parameters")
        return 0
    return guard(lambda: plan_command(own, argv), argv)


def plan_command(own: argparse.Namespace, argv: list[str]) -> int:
    from peftkit.arguments import parse_train_args

    names, defaults = strategies_of(own.strategy), None
    if own.strategy is None and (shots := asked_shots(argv, {})) and has_pair_stage(own.task):
        (name, defaults), names = FEWSHOT_DEFAULT, [FEWSHOT_DEFAULT[0]]
        print(f"peftkit: note: --shots {shots} and no --strategy: planning the few-shot default, --strategy {name} "
              + " ".join(f"--{flag}" for flag in defaults) + ", as `peftkit train` would train.", file=sys.stderr)
    parsed = {}
    for name in names:
        try:
            parsed[name] = parse_train_args(argv, name, "peftkit plan", own.task, defaults)
        except PeftkitError as exc:
            if len(names) == 1:
                raise
            # a flag of one strategy (--lora_r) is not one of another's (full): that one is planned without it
            parsed[name] = parse_train_args(_known(argv, name, own.task), name, "peftkit plan", own.task, defaults)
            print(f"peftkit: note: {name}: {exc}", file=sys.stderr)
    model_args, data_args, train_args, _, task = parsed[names[0]]
    setup_logging(train_args.debug)
    import torch

    from peftkit import planner, preflight

    launch = preflight.accelerate_config(own.accelerate_config) if own.accelerate_config else {}
    device = own.device or launch.get("device") or ("cuda" if torch.cuda.is_available() else "cpu")
    env_processes, env_sharding = preflight.sharding_of_environment()
    if launch:
        env_processes, env_sharding = launch["processes"], launch["sharding"]
    processes = own.num_processes or env_processes
    check(processes >= 1, f"--num_processes must be at least 1, got {processes}.")
    sharding = own.sharding or (env_sharding if processes == env_processes else "ddp" if processes > 1 else "none")
    data = read_data(task, model_args, data_args, train_args, processes)
    limit, where = preflight.memory_limit(train_args, device, processes if device == "cpu" else 1)
    if device == "cuda" and not torch.cuda.is_available() and not train_args.memory:
        limit, where = None, "no GPU here: pass --memory with the GPU's size"
    candidates = []
    config = preflight.model_config(task, model_args)
    for name in names:
        m_args, _, t_args, strategy, _ = parsed[name]
        setup = planner.Setup(micro_batch=data["micro_batch"], length=data["length"],
                              accumulation=t_args.gradient_accumulation_steps,
                              gradient_checkpointing=t_args.gradient_checkpointing, processes=processes,
                              sharding=sharding, device=device,
                              mixed_precision=mixed_precision(t_args, device) or launch.get("mixed_precision"),
                              optimizer=t_args.optimizer)
        try:
            plan = preflight.plan_candidate(task, name, strategy, m_args, setup, config)
        except PeftkitError as exc:
            if len(names) == 1:
                raise
            print(f"peftkit: note: {name} is left out: {exc}", file=sys.stderr)
            continue
        stage = None
        if t_args.contrastive:  # the pair stage: both texts of --contrastive_batch_size pairs a step

            def stage_plan(pairs: int, name=name, strategy=strategy, m_args=m_args, setup=setup) -> planner.Plan:
                return preflight.plan_candidate(task, name, strategy, m_args, dataclasses.replace(
                    setup, micro_batch=preflight.stage_micro_batch(pairs, processes), accumulation=1), config)

            stage = stage_plan(t_args.contrastive_batch_size)
        candidate = preflight.Candidate(name, strategy, plan, None, [], stage)
        candidate.fits = None if limit is None else candidate.peak <= limit
        if limit is not None and plan.peak > limit:
            candidate.advice = preflight.advise(task, name, strategy, m_args, setup, limit,
                                                lambda other, s=strategy: preflight.strategy_like(s, other), config)
        elif candidate.fits is False:  # the classifier fits; the stage does not
            smaller = preflight.smaller_stage_batch(t_args.contrastive_batch_size, limit,
                                                    lambda pairs: stage_plan(pairs).peak)
            candidate.advice = [{"change": "a smaller contrastive batch", "fits": smaller is not None,
                                 "flags": f"--contrastive_batch_size {smaller[0] if smaller else 1}",
                                 "peak": smaller[1] if smaller else stage_plan(1).peak}]
        fits = candidate.fits
        if own.calibrate:
            check(device == "cpu" or torch.cuda.is_available(), "--calibrate times real steps on this machine's "
                  "device, and there is no GPU here.")
            if fits is False:
                print(f"peftkit: note: {name} is not calibrated: it does not fit.", file=sys.stderr)
            else:
                preflight.calibrate(task, name, strategy, m_args, setup, plan, data, config)
        candidates.append(candidate)
    check(bool(candidates), "None of the strategies could be planned (see the notes above).")
    out = {"model": model_args.model_name_or_path, "task": own.task, "device": device, "memory_limit": limit,
           "memory_limit_from": where, "data": {k: v for k, v in data.items() if k != "lengths"},
           "plans": [c.as_dict() for c in candidates]}
    text = json.dumps(out, indent=2)
    if own.output_file:
        Path(own.output_file).write_text(text + "\n")
    print(text if own.format == "json" else preflight.table(candidates, limit, where))
    return 0


def mixed_precision(train_args, device: str) -> str | None:
    chosen = train_args.mixed_precision
    if chosen in (None, "no"):
        return None
    return chosen


def _known(argv: list[str], strategy: str, task: str) -> list[str]:
    """``argv`` without the flags (and their values) that strategy ``strategy``'s parser does not have."""
    from peftkit.arguments import build_train_parser

    parser, _ = build_train_parser(strategy, "peftkit plan", task)
    known = {o for a in parser._actions for o in a.option_strings}
    out, skip = [], False
    for token in argv:
        if token.startswith("--"):
            skip = token.split("=")[0] not in known
        if not skip:
            out.append(token)
    return out


def read_data(task, model_args, data_args, train_args, processes: int) -> dict:
    """What the plan needs from the data: examples, labels, the longest example and the lengths (where the
    model has a tokenizer), and the batch the run would derive. A model directory without a tokenizer plans at
    --max_seq_length."""
    from peftkit.data import load_raw_datasets
    from peftkit.defaults import derive_defaults

    # with --shots, the K per class the run would train on
    raw, desc, _ = load_raw_datasets(data_args, train_args.seed, builtin=task.builtin_dataset, own=task.load_raw,
                                     others=task.builtin_datasets, per_class=task.draws_per_class)
    task.discover(raw)
    lengths, length = None, data_args.max_seq_length
    try:
        processor = task.load_processor(model_args)
    except PeftkitError as exc:
        processor = None
        print(f"peftkit: note: no tokenizer ({str(exc)[:120]}...): planning at --max_seq_length {length}.",
              file=sys.stderr)
    if processor is not None:
        train = task.preprocess(raw, processor)["train"]
        if "input_ids" in train.column_names:
            lengths = [len(ids) for ids in train["input_ids"]]
            length = max(lengths, default=length)
    num_train = len(raw["train"])
    derived_args, derived = derive_defaults(
        dataclasses.replace(train_args), num_train, len(raw.get("validation", ())), processes,
        num_classes=len(getattr(task, "labels", ()) or ()), min_steps=task.defaults.min_steps,
        default_learning_rate=1e-4, lr_reference_batch=None)
    return {"dataset": desc, "num_train": num_train, "length": length, "lengths": lengths,
            "micro_batch": min(derived_args.per_device_train_batch_size, -(-num_train // processes)),
            "epochs": derived_args.num_train_epochs, "max_steps": derived_args.max_steps,
            "derived": {k: v["value"] for k, v in derived.items()}}
