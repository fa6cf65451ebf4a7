"""Flags, config files and bad input through the real command entry points (in-process)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from peftkit.cli import main, parse_train_args, train_main

SMALL = ["--max_train_samples", "16", "--max_eval_samples", "8", "--max_steps", "1", "--report_to", "none"]


def test_config_file_then_flags_override(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("learning_rate: 0.01\nlora_r: 4\nnum_train_epochs: 2\nlora_target_modules: [query, key]\n")
    model_args, data_args, train_args, strategy, _ = parse_train_args(
        ["--config", str(cfg), "--lora_r", "16"], "lora")
    assert train_args.learning_rate == 0.01 and train_args.num_train_epochs == 2
    assert strategy.lora_r == 16 and strategy.lora_target_modules == ["query", "key"]


def test_config_file_for_another_strategy_is_refused(tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("strategy: full\n")
    assert train_main(["--config", str(cfg)], task="text_cls", strategy="lora") == 2
    assert "sets strategy 'full', but this run is 'lora'" in capsys.readouterr().err


def test_qlora_is_lora_plus_a_preset():
    strategy = parse_train_args([], "qlora")[3]
    assert type(strategy).__name__ == "LoRA" and strategy.quantization == "nf4"
    strategy = parse_train_args(["--quantization", "int8"], "qlora")[3]
    assert strategy.quantization == "int8"


def test_a_bad_value_is_one_line_not_the_usage_block(capsys):
    assert main(["train", "--learning_rate", "abc"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["peftkit: error: argument --learning_rate/--learning-rate: invalid float value: 'abc'. See --help "
                   "for every flag."]


@pytest.mark.parametrize("argv,expected", [
    (["analyze", "RUN", "--top_k", "abc"], "argument --top_k: invalid int value: 'abc'. See `peftkit analyze --help`."),
    (["eval"], "the following arguments are required: run_dir. See `peftkit eval --help`."),
    (["search", "--n_trials", "x"], "argument --n_trials: invalid int value: 'x'. See `peftkit search --help`."),
])
def test_the_other_commands_answer_a_bad_value_in_one_line(argv, expected, capsys):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"peftkit: error: {expected}"]


def test_unknown_config_key(tmp_path, capsys):
    cfg = tmp_path / "run.json"
    cfg.write_text(json.dumps({"learning_rat": 0.1}))
    assert train_main(["--config", str(cfg)], task="text_cls", strategy="lora") == 2
    assert "Unknown key(s) in" in capsys.readouterr().err


@pytest.mark.parametrize("flags,message", [
    (["--learning_rate", "-1"], "--learning_rate must be positive, got -1.0"),
    (["--lora_r", "0"], "--lora_r must be a positive integer, got 0"),
    (["--per_device_train_batch_size", "0"], "--per_device_train_batch_size must be a positive integer, got 0"),
    (["--warmup_ratio", "1.5"], "--warmup_ratio must be in [0, 1)"),
    (["--quantization", "3bit"], "--quantization must be one of nf4, fp4, int8"),
])
def test_impossible_flag_values(flags, message, capsys, tmp_path):
    code = train_main(flags + ["--output_dir", str(tmp_path)], task="text_cls", strategy="lora")
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err


def test_debug_shows_the_traceback():
    from peftkit.errors import PeftkitError

    with pytest.raises(PeftkitError):
        train_main(["--lora_r", "0", "--debug"], task="text_cls", strategy="lora")


@pytest.mark.parametrize("command", ["eval", "predict", "analyze", "merge"])
def test_debug_shows_the_traceback_of_every_command_on_a_run(command, tmp_path, capsys):
    from peftkit.errors import PeftkitError

    extra = ["--output_dir", str(tmp_path / "out")] if command == "merge" else []
    assert main([command, str(tmp_path / "missing"), *extra]) == 2  # one line, no traceback
    assert "Traceback" not in capsys.readouterr().err
    with pytest.raises(PeftkitError):
        main([command, str(tmp_path / "missing"), *extra, "--debug"])


def test_unknown_strategy(capsys):
    assert main(["train", "--strategy", "nope"]) == 2
    from peftkit.strategies import available

    assert f"Unknown strategy 'nope'. Available: {', '.join(available())}." in capsys.readouterr().err


def test_wrong_model_path(tmp_path, capsys):
    code = train_main(["--model_name_or_path", str(tmp_path / "missing"), "--output_dir", str(tmp_path / "o"),
                       *SMALL], task="text_cls", strategy="lora")
    err = capsys.readouterr().err
    assert code == 2 and "missing" in err and "--model_name_or_path" in err


def test_model_without_a_classification_head(tmp_path, capsys, builtin_model_dir):
    from transformers import ViTConfig

    ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32).save_pretrained(
        tmp_path / "vit")
    code = train_main(["--model_name_or_path", str(tmp_path / "vit"), "--tokenizer_name", builtin_model_dir,
                       "--output_dir", str(tmp_path / "o"), *SMALL], task="text_cls", strategy="lora")
    err = capsys.readouterr().err
    assert code == 2 and "'vit' has no sequence-classification head class" in err


def test_missing_column_exits_cleanly(tmp_path, capsys):
    data = tmp_path / "d.csv"
    data.write_text("review,stars\n" + "".join(f"r{i},{i % 2}\n" for i in range(10)))
    code = train_main(["--train_file", str(data), "--text_column", "review", "--output_dir", str(tmp_path / "o"),
                       *SMALL], task="text_cls", strategy="lora")
    err = capsys.readouterr().err
    assert code == 2 and "'label' (--label_column) is not in the train data" in err and "review, stars" in err


def test_not_a_run_directory(tmp_path, capsys):
    assert main(["predict", str(tmp_path)]) == 2
    assert "is not a peftkit run directory" in capsys.readouterr().err


@pytest.mark.parametrize("env,expected", [
    ({"ACCELERATE_DYNAMO_BACKEND": "NO", "OMP_NUM_THREADS": "1"}, "cores"),  # accelerate launch's default
    ({"ACCELERATE_DYNAMO_BACKEND": "NO", "OMP_NUM_THREADS": "1", "PEFTKIT_CPU_THREADS": "1"}, 1),
    ({"OMP_NUM_THREADS": "1"}, "unchanged"),  # the user's own choice outside accelerate launch
])
def test_a_lone_cpu_process_gets_the_cores_accelerate_launch_left_idle(monkeypatch, env, expected):
    import os
    from types import SimpleNamespace

    import torch

    from peftkit.devices import use_idle_cores

    for key in ("ACCELERATE_DYNAMO_BACKEND", "OMP_NUM_THREADS", "PEFTKIT_CPU_THREADS"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        use_idle_cores(SimpleNamespace(device=torch.device("cpu"), num_processes=1))
        got = torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    want = {"cores": len(os.sched_getaffinity(0)), "unchanged": 1}.get(expected, expected)
    assert got == want


def test_bad_thread_count_is_refused(monkeypatch):
    from types import SimpleNamespace

    import torch

    from peftkit.devices import use_idle_cores
    from peftkit.errors import PeftkitError

    monkeypatch.setenv("PEFTKIT_CPU_THREADS", "two")
    with pytest.raises(PeftkitError, match="PEFTKIT_CPU_THREADS must be a positive integer, got 'two'"):
        use_idle_cores(SimpleNamespace(device=torch.device("cpu"), num_processes=1))


def test_trainer_flags_users_type_by_habit_map_onto_peftkits(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("bf16: true\nsave_strategy: 'no'\n")
    _, _, args, *_ = parse_train_args(["--fp16", "--optim", "adamw_torch", "--eval_strategy", "steps", "--eval_steps",
                                      "50", "--save_strategy=epoch", "--do_train", "--do_eval", "--warmup_steps", "5",
                                      "--logging_dir", "tb", "--dataloader_num_workers", "2"], "lora")
    assert (args.mixed_precision, args.optimizer, args.eval_steps, args.save_steps) == ("fp16", "adamw", 50, 0)
    assert (args.warmup_steps, args.logging_dir, args.dataloader_num_workers) == (5, "tb", 2)
    _, _, args, *_ = parse_train_args(["--config", str(cfg)], "lora")
    assert (args.mixed_precision, args.save_steps) == ("bf16", -1)
    _, _, args, *_ = parse_train_args(["--fp16", "false", "--do_eval", "false"], "lora")
    assert args.mixed_precision is None and args.eval_every_epochs is None  # derived from the data
    _, _, args, *_ = parse_train_args(["--eval_strategy", "epoch"], "lora")
    assert args.eval_every_epochs == 1  # said outright: every epoch, whatever the data


@pytest.mark.parametrize("flags,message", [
    (["--push_to_hub"], "peftkit does not upload to the Hub"),
    (["--optim", "adafactor"], "trains with adamw, adam, sgd or rmsprop; pass --optimizer"),
    (["--eval_strategy", "steps"], "needs --eval_steps N"),
    (["--save_strategy", "best"], "use --save_steps N"),
    (["--learning_rat", "0.1"], "Unrecognised arguments: --learning_rat 0.1. Did you mean --learning_rate?"),
    (["--metric_for_best_model", "acc"], "'acc' is not a metric of task text_cls. Choose one of: accuracy, f1"),
    (["--mixed_precision", "banana"], "--mixed_precision must be one of no, fp16, bf16, fp8, auto, got 'banana'"),
])
def test_flag_mistakes_are_named_before_any_work(flags, message, capsys, tmp_path):
    out = tmp_path / "o"
    code = train_main([*flags, "--output_dir", str(out)], task="text_cls", strategy="lora")
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err, err
    assert not out.exists()  # refused before the output directory, the data or the model were touched


def test_peftkit_train_help_lists_strategy_and_says_what_no_flags_do(capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "--strategy", "qlora", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert info.value.code == 0
    from peftkit.strategies import available

    assert "bitfit" in available() and "ia3" in available()
    assert f"--strategy STRATEGY how the model is adapted: {', '.join(available())}" in text
    assert "turn off --bnb_4bit_use_double_quant (on by default)" in text
    assert "(default: False)" not in text.split("--no_bnb_4bit_use_double_quant")[2][:80]


def test_every_strategy_and_task_has_working_help(capsys):
    from peftkit.strategies import available
    from peftkit.tasks import available as tasks

    for task in tasks():
        for strategy in available():  # a stray % in a flag's help breaks argparse's formatting of all of them
            with pytest.raises(SystemExit) as info:
                main(["train", "--task", task, "--strategy", strategy, "--help"])
            assert info.value.code == 0, (task, strategy)
            assert f"with the '{strategy}' strategy" in " ".join(capsys.readouterr().out.split())


def test_an_existing_runs_file_list_says_how_many_it_leaves_out(tmp_path):
    from peftkit.errors import PeftkitError
    from peftkit.runner import prepare_output_dir

    for name in ("results.json", "peftkit_config.json", "adapter_config.json", "adapter_model.safetensors"):
        (tmp_path / name).write_text("{}")
    for step in (5, 10, 15):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    args = parse_train_args(["--output_dir", str(tmp_path)], "lora")[2]
    with pytest.raises(PeftkitError, match=r"\(peftkit_config.json, results.json, .* and 2 more\). It has finished"):
        prepare_output_dir(tmp_path, args, {})
    args.resume_from_checkpoint = "latest"  # a finished run is not trained again from its last checkpoint
    with pytest.raises(PeftkitError, match="has finished .*nothing to resume"):
        prepare_output_dir(tmp_path, args, {})


HEAVY = ("torch", "torchvision", "accelerate", "peft", "bitsandbytes", "datasets")


@pytest.mark.parametrize("argv", [
    ["train", "--help"], ["train", "--task", "causal_lm", "--strategy", "qlora", "--help"],
    ["train", "--task", "image_cls", "--strategy", "head", "--help"], ["train", "--task", "token_cls", "--help"],
    ["search", "--help"], ["eval", "--help"], ["train", "--learning_rate", "abc"], ["train", "--lora_rank", "4"],
])
def test_help_and_flag_mistakes_load_no_torch(argv):
    # `peftkit train --help` took 14-16 s when it loaded torch, transformers' models and bitsandbytes (issue 32)
    code = (f"import sys\nfrom peftkit.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
            f"print([m for m in {HEAVY!r} if m in sys.modules])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.stdout.strip().splitlines()[-1] == "[]", proc.stderr[-2000:]
    assert "bitsandbytes" not in proc.stderr and "kernels-community" not in proc.stderr


def test_a_recipes_help_loads_no_torch():
    from helpers import ROOT

    code = ("import runpy, sys\nsys.argv = ['lora_sft.py', '--help']\ntry:\n"
            f"    runpy.run_path({str(ROOT / 'recipes' / 'lora_sft.py')!r}, run_name='__main__')\n"
            f"except SystemExit:\n    pass\nprint([m for m in {HEAVY!r} if m in sys.modules])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert "--generation_max_new_tokens" in proc.stdout and proc.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize("content,expected", [
    # taken before: 1 step logged, 2 run
    ("max_steps: 1.5\n", "run.yaml: argument --max_steps/--max-steps: invalid int value: '1.5'"),
    ("per_device_train_batch_size: [8]\n", "per_device_train_batch_size takes one value, not a list ([8])"),
    ("seed: true\n", "argument --seed: invalid int value: 'true'"),
    ("learning_rate: {lora: 0.001}\n", "learning_rate must be a value, not a mapping"),
    ("optimizer: adamax\n", "--optimizer must be one of"),
])
def test_a_config_file_is_type_checked_like_the_command_line(tmp_path, capsys, content, expected):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(content)
    assert train_main(["--config", str(cfg), "--output_dir", str(tmp_path / "r")], task="text_cls",
                      strategy="lora") == 2
    err = capsys.readouterr().err
    assert expected in err, err
    assert not (tmp_path / "r").exists()


def test_a_config_files_values_are_typed_and_the_command_line_wins(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("max_steps: 3\nlearning_rate: 0.001\nlora_target_modules: [query, key]\nkeep_checkpoints: true\n"
                   "gradient_checkpointing: true\nmax_eval_samples: null\n")
    model_args, data_args, train_args, strategy, _ = parse_train_args(
        ["--config", str(cfg), "--learning_rate", "5e-4"], "lora")
    assert train_args.max_steps == 3 and isinstance(train_args.max_steps, int)
    assert train_args.learning_rate == 5e-4 and strategy.lora_target_modules == ["query", "key"]
    assert train_args.keep_checkpoints is True and train_args.gradient_checkpointing is True
    assert data_args.max_eval_samples is None


@pytest.mark.parametrize("argv, strategy, defaults", [
    (["--shots", "8"], "full", {"contrastive": True}),
    (["--shots=8", "--config", "{cfg}"], "full", {"contrastive": True}),
    (["--config", "{cfg_shots}"], "full", {"contrastive": True}),
    (["--shots", "8", "--strategy", "lora"], "lora", None),
    (["--shots", "8", "--task", "image_cls"], "lora", None),  # no pair stage there: lora, as without --shots
    (["--max_train_samples", "16"], "lora", None),
])
def test_shots_without_a_strategy_choose_the_few_shot_default(argv, strategy, defaults, tmp_path, monkeypatch):
    from peftkit.commands import train

    (tmp_path / "a.yaml").write_text("learning_rate: 0.01\n")
    (tmp_path / "b.yaml").write_text("shots: 16\n")
    argv = [a.format(cfg=tmp_path / "a.yaml", cfg_shots=tmp_path / "b.yaml") for a in argv]
    seen = {}
    monkeypatch.setattr(train, "train_main", lambda rest, **kw: seen.update(kw) or 0)
    assert main(["train", *argv]) == 0
    assert seen["strategy"] == strategy and seen["defaults"] == defaults
    assert (seen["note"] is None) == (defaults is None)
