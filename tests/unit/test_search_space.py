"""`peftkit search`'s space: flags and values from the command line or YAML, checked before any trial runs."""

from __future__ import annotations

import optuna
import pytest

from peftkit.cli import main
from peftkit.errors import PeftkitError
from peftkit.search.space import Param, build_space, split_flags


def test_flags_take_choices_ranges_and_fixed_values():
    space = build_space("text_cls", ["--strategy", "lora", "full", "--learning_rate", "1e-4:3e-3:log", "--lora_r",
                                     "4", "8", "--max_train_samples", "500", "--gradient_checkpointing"], None)
    assert space.strategies == ["lora", "full"]
    assert space.params["learning_rate"] == Param("learning_rate", low=1e-4, high=3e-3, log=True)
    assert space.params["lora_r"] == Param("lora_r", choices=[4, 8])
    assert space.fixed == {"max_train_samples": 500, "gradient_checkpointing": None}
    # a flag a strategy does not take is neither drawn nor passed for it
    argv = space.trial_argv({"strategy": "full", "learning_rate": 1e-3})
    assert argv == ["--max_train_samples", "500", "--gradient_checkpointing", "--learning_rate", "0.001"]
    assert "--lora_r" in space.trial_argv({"strategy": "lora", "learning_rate": 1e-3, "lora_r": 8})


def test_integer_ranges_and_the_yaml_file_which_the_command_line_overrides():
    space = build_space("text_cls", ["--lora_r", "16"], {"strategy": ["lora", "dora"], "lora_r": [4, 8],
                                                         "lora_alpha": {"low": 8, "high": 64, "log": True},
                                                         "num_train_epochs": 3})
    assert space.params["lora_alpha"].integer and space.params["lora_alpha"].log
    assert space.fixed == {"lora_r": 16, "num_train_epochs": 3}


def test_grid_multiplies_only_what_each_strategy_takes():
    space = build_space("text_cls", ["--strategy", "lora", "head", "--lora_r", "4", "8", "--learning_rate", "1e-3",
                                     "1e-2"], None)
    grid = space.grid(seed=0)
    assert len(grid) == 2 * 2 + 2  # head has no rank: 2 points, not 4
    assert {"strategy": "head", "learning_rate": 1e-3} in grid
    assert sorted(map(str, grid)) == sorted(map(str, space.grid(seed=1)))  # another order, same points


def test_grid_refuses_a_range():
    space = build_space("text_cls", ["--learning_rate", "1e-4:1e-2:log"], None)
    with pytest.raises(PeftkitError, match="--method grid needs a list of values"):
        space.grid(seed=0)


def test_suggestions_follow_the_strategy():
    space = build_space("text_cls", ["--strategy", "lora", "head", "--lora_r", "4", "8", "--learning_rate",
                                     "1e-4:1e-2:log"], None)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(12):
        settings = space.suggest(study.ask())
        seen.add(settings["strategy"])
        assert ("lora_r" in settings) == (settings["strategy"] == "lora")
        assert 1e-4 <= settings["learning_rate"] <= 1e-2
    assert seen == {"lora", "head"}


@pytest.mark.parametrize(("tokens", "message"), [
    (["--learning_rat", "1e-3"], "--learning_rat is not a flag of `peftkit train --task text_cls`"),
    (["--output_dir", "x"], "--output_dir cannot be part of a search space"),
    (["--strategy", "lora", "nope"], "Unknown strategy"),
    (["--learning_rate", "3e-3:1e-4"], "the low end must be below the high end"),
    (["--learning_rate", "0:1e-2:log"], "a log range needs a positive low end"),
    (["--lora_r", "4", "--lora_r", "8"], "--lora_r is given twice"),
    (["8", "--lora_r", "4"], "'8' is not a flag"),
])
def test_mistakes_are_named_before_any_trial(tokens, message):
    with pytest.raises(PeftkitError, match=message.replace("`", ".").replace("(", ".")):
        build_space("text_cls", tokens, None)


def test_a_value_no_run_would_take_is_refused():
    with pytest.raises(PeftkitError, match="invalid float value: 'fast'"):  # as `peftkit train` gives it
        build_space("text_cls", ["--learning_rate", "fast", "slow"], None)


def test_split_flags_keeps_values_in_order():
    assert split_flags(["--a", "1", "2", "--b=3", "--c"]) == {"a": ["1", "2"], "b": ["3"], "c": []}


def test_search_command_reports_a_bad_space_as_an_error(tmp_path, capsys):
    code = main(["search", "--output_dir", str(tmp_path / "s"), "--lora_rank", "4", "8"])
    err = capsys.readouterr().err
    assert code == 2 and "--lora_rank is not a flag" in err and "Did you mean --lora_r?" in err
    assert not (tmp_path / "s").exists()


def test_train_takes_strategy_and_task_from_the_config_file(tmp_path, capsys):
    cfg = tmp_path / "best.yaml"
    cfg.write_text("task: token_cls\nstrategy: head\nlearning_rate: 0.01\n")
    with pytest.raises(SystemExit) as exit_info:  # --help exits through argparse
        main(["train", "--config", str(cfg), "--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    assert "task 'token_cls' with the 'head' strategy" in out


def test_values_per_strategy_are_parameters_of_their_own():
    space = build_space("text_cls", ["--strategy", "lora", "full", "--learning_rate", "lora=5e-4:5e-3:log",
                                     "full=2e-5,5e-5", "--lora_r", "4", "8"], None)
    assert space.params["learning_rate@lora"] == Param("learning_rate@lora", low=5e-4, high=5e-3, log=True,
                                                        strategy="lora")
    assert space.params["learning_rate@full"].choices == [2e-5, 5e-5]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(10):
        settings = space.suggest(study.ask())
        rate = settings.get("learning_rate@lora", settings.get("learning_rate@full"))
        assert len([k for k in settings if k.startswith("learning_rate")]) == 1
        argv = space.trial_argv(settings)
        assert argv[argv.index("--learning_rate") + 1] == repr(rate)
        if settings["strategy"] == "full":
            assert rate in (2e-5, 5e-5) and "--lora_r" not in argv
        else:
            assert 5e-4 <= rate <= 5e-3
    with pytest.raises(PeftkitError, match="learning_rate@lora is a range"):
        space.grid(seed=0)


def test_per_strategy_values_from_yaml_and_for_an_absent_strategy():
    space = build_space("text_cls", [], {"strategy": ["lora", "head"], "learning_rate": {"lora": [1e-3, 2e-3],
                                                                                          "head": 2e-2}})
    assert sorted(map(str, space.grid(seed=0))) == sorted(map(str, [
        {"strategy": "lora", "learning_rate@lora": 1e-3}, {"strategy": "lora", "learning_rate@lora": 2e-3},
        {"strategy": "head", "learning_rate@head": 2e-2}]))
    with pytest.raises(PeftkitError, match="gives values for full, which this search does not try"):
        build_space("text_cls", ["--strategy", "lora", "--learning_rate", "full=1e-5"], None)


def test_a_failed_trials_error_is_found_behind_a_progress_bar(tmp_path):
    from peftkit.search.study import last_error

    log = tmp_path / "train.log"
    log.write_text("Training:  38%|###| 3/8 [00:00<00:00]peftkit: error: The training loss became NaN/inf at step 4.\n"
                   "Training:  38%|###| 3/8\n")
    assert last_error(log) == "The training loss became NaN/inf at step 4."
    log.write_text("Traceback (most recent call last):\n  ...\ntorch.OutOfMemoryError: CUDA out of memory.\n")
    assert last_error(log) == "torch.OutOfMemoryError: CUDA out of memory."


def test_timeout_starts_no_trial_after_it(tmp_path, capsys):
    out = tmp_path / "s"
    code = main(["search", "--timeout", "0.000001", "--n_trials", "3", "--output_dir", str(out), "--strategy", "head",
                 "--max_steps", "1"])
    captured = capsys.readouterr()
    assert code == 1 and "--timeout 1e-06 s reached: no further trial started" in captured.out + captured.err
    assert "No trial completed" in captured.err and not list(out.glob("trial_*"))
    assert "0 trials" in (out / "search.md").read_text()
