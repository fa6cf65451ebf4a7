"""Run a search: an Optuna study in OUTPUT_DIR/study.journal whose trials are `peftkit train` processes, one run
directory each (OUTPUT_DIR/trial_NNN). A rerun of the same command picks the study up: finished trials stay as
they are, an interrupted one resumes from its checkpoint, and only the remaining trials run."""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peftkit import locks
from peftkit.errors import check
from peftkit.interrupt import SIGNALS, TrainingInterrupted
from peftkit.layout import CONFIG_FILE, list_checkpoints
from peftkit.search import report
from peftkit.search.space import Space, flag_of
from peftkit.search.trial import ENV, STUDY_NAME, make_pruner, open_storage

logger = logging.getLogger(__name__)
JOURNAL, SPACE_FILE, LOCK = "study.journal", "search_space.json", "search.lock"


@dataclass
class Options:
    output_dir: Path
    method: str = "tpe"
    n_trials: int | None = None
    timeout: float | None = None
    pruner: str = "median"
    sampler_seed: int = 42
    launcher: str | None = None
    overwrite_output_dir: bool = False
    test: bool = True  # evaluate the chosen configuration on the test split at the end


def direction(task: str, metric: str) -> str:
    """Optuna's direction for ``metric`` of ``task`` (the task says which way is better)."""
    from peftkit.tasks import get_task

    return "minimize" if get_task(task).cls.metrics.get(metric, "max") == "min" else "maximize"


def metric_of(space: Space) -> str:
    """The metric that ranks trials: --metric_for_best_model if the space fixes it, else the task's."""
    from peftkit.tasks import get_task

    metric = space.fixed.get("metric_for_best_model") or get_task(space.task).cls.default_metric
    check(metric in get_task(space.task).cls.metrics, f"--metric_for_best_model {metric!r} is not a metric of task "
          f"{space.task}: {', '.join(get_task(space.task).cls.metrics)}.")
    return metric


def make_sampler(method: str, seed: int, n_trials: int):
    """Optuna sampler for ``--method``."""
    import optuna

    if method == "tpe":  # its first trials are random draws, then it models the good ones
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(2, min(10, n_trials // 2)))
    return optuna.samplers.RandomSampler(seed=seed)  # grid: every trial's values are given (see Space.grid)


def exclusive(output_dir: Path):
    """One search at a time per directory (the lock goes with the process, however it ends)."""
    return locks.exclusive(output_dir, "search", LOCK)


REPORT_FILES = ("best.yaml", "search.json", "search.md", "search.png")
TRIAL_DIR = re.compile(r"trial_\d{3,}")


def is_search_file(path: Path) -> bool:
    """A file or folder `peftkit search` writes in its --output_dir (what --overwrite_output_dir may remove)."""
    name = path.name
    return (name in (SPACE_FILE, LOCK, *REPORT_FILES) or name.startswith(JOURNAL)
            or (path.is_dir() and TRIAL_DIR.fullmatch(name) is not None))


def check_same_search(output_dir: Path, record: dict[str, Any], overwrite: bool) -> None:
    """A rerun continues the study only with the same space, task and method; --overwrite_output_dir starts over."""
    path = output_dir / SPACE_FILE
    if overwrite:
        import shutil

        for item in output_dir.iterdir():  # the search's own files only: a user's files stay where they are
            if item.name != LOCK and is_search_file(item):
                shutil.rmtree(item) if item.is_dir() else item.unlink()
    elif path.is_file():
        old = json.loads(path.read_text())
        changed = sorted(k for k in set(old) | set(record) if old.get(k) != record.get(k))
        check(not changed, f"{str(output_dir)!r} holds a search with other settings ({', '.join(changed)}: "
              f"{', '.join(f'{old.get(k)} -> {record.get(k)}' for k in changed)}). Rerun it with its own "
              "settings to continue it (only --n_trials, --timeout and --pruner may change), pass "
              "--overwrite_output_dir to start over, or choose another --output_dir.")
    else:
        stray = [p.name for p in output_dir.iterdir() if p.name != LOCK]
        check(not stray, f"--output_dir {str(output_dir)!r} already holds other files ({', '.join(stray[:5])}). "
              "Choose an empty or new directory, or pass --overwrite_output_dir (which removes only a search's "
              "own files and keeps the others).")
    path.write_text(json.dumps(record, indent=2))


def run(space: Space, opts: Options) -> dict[str, Any]:
    """Run (or continue) the study, write the leaderboard, the plot and best.yaml; return the summary."""
    import optuna

    out = opts.output_dir
    out.mkdir(parents=True, exist_ok=True)
    metric = metric_of(space)
    grid = space.grid(opts.sampler_seed) if opts.method == "grid" else None
    n_trials = opts.n_trials or (len(grid) if grid is not None else 10)
    record = {"space": space.as_dict(), "method": opts.method, "metric": metric, "sampler_seed": opts.sampler_seed,
              "launcher": opts.launcher}
    with exclusive(out):
        check_same_search(out, record, opts.overwrite_output_dir)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        storage = open_storage(str(out / JOURNAL))
        # A seeded sampler restarted on a resumed study would draw its first trials' values again: offset the seed
        earlier = len(optuna.load_study(study_name=STUDY_NAME, storage=storage).trials) \
            if STUDY_NAME in optuna.get_all_study_names(storage) else 0
        study = optuna.create_study(study_name=STUDY_NAME, storage=storage, load_if_exists=True,
                                    direction=direction(space.task, metric), pruner=make_pruner(opts.pruner),
                                    sampler=make_sampler(opts.method, opts.sampler_seed + earlier, n_trials))
        runner = TrialRunner(space, opts, study, metric)
        try:
            runner.loop(n_trials, grid)
        finally:  # the leaderboard so far, also when stopped
            summary = report.write(out, study, space, metric, opts.method)
        if opts.test and summary.get("best") is not None:
            summary = report.add_test(out, summary, runner.evaluate_test(summary["best"]["run_dir"]))
        return summary


class TrialRunner:
    """Starts each trial's process, forwards a stop request to it, and tells the study how it ended."""

    def __init__(self, space: Space, opts: Options, study, metric: str):
        self.space, self.opts, self.study, self.metric = space, opts, study, metric
        self.started = time.monotonic()
        self.stop_signal = 0
        self.proc: subprocess.Popen | None = None

    def finished(self) -> int:
        return sum(t.state.is_finished() for t in self.study.get_trials(deepcopy=False))

    def loop(self, n_trials: int, grid: list[dict] | None) -> None:
        import optuna
        from tqdm.auto import tqdm

        # As in training, a signal the user chose to ignore (nohup: SIGHUP) stays ignored, here and in the trials;
        # the ones caught here reach a trial's process as the default, which its training loop then catches.
        previous = {sig: signal.signal(sig, self._on_signal) for sig in SIGNALS
                    if signal.getsignal(sig) is not signal.SIG_IGN}
        bar = tqdm(total=n_trials, initial=min(self.finished(), n_trials), desc="Search", unit="trial",
                   dynamic_ncols=True)
        try:
            for frozen in self.study.get_trials(states=(optuna.trial.TrialState.RUNNING,)):
                bar.write(f"Trial {frozen.number} was interrupted: continuing it.")
                self.run_trial(optuna.Trial(self.study, frozen._trial_id), frozen.params, bar)
            while self.finished() < n_trials and not self._out_of_time() and not self.stop_signal:
                if grid is not None:
                    taken = [t.params for t in self.study.get_trials(deepcopy=False)]
                    left = [p for p in grid if p not in taken]
                    if not left:
                        bar.write("Every combination of the grid has run.")
                        break
                    self.study.enqueue_trial(left[0])
                trial = self.study.ask()
                self.run_trial(trial, self.space.suggest(trial), bar)
            if self.stop_signal:
                raise TrainingInterrupted(f"Stopped by {signal.Signals(self.stop_signal).name} between trials. Rerun "
                                        "the same command to continue the search.", self.stop_signal)
            if self._out_of_time() and self.finished() < n_trials:
                bar.write(f"--timeout {self.opts.timeout:g} s reached: no further trial started.")
        finally:
            bar.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _out_of_time(self) -> bool:
        return self.opts.timeout is not None and time.monotonic() - self.started >= self.opts.timeout

    def _on_signal(self, signum, frame) -> None:
        """First signal: the running trial saves a checkpoint and stops; the search then stops. A second Ctrl-C is
        passed on too (the trial stops at once)."""
        first = not self.stop_signal
        self.stop_signal = self.stop_signal or signum
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signum)
        if first:
            logger.warning("%s received: the running trial saves a checkpoint and stops (send it again to stop it at "
                           "once); rerun the same command to continue.", signal.Signals(signum).name)

    def command(self, settings: dict[str, Any], run_dir: Path) -> list[str]:
        argv = ["-m", "peftkit", "train", "--task", self.space.task, "--strategy", settings["strategy"],
                *self.space.trial_argv(settings), "--output_dir", str(run_dir), "--use_test_split", "false"]
        if list_checkpoints(run_dir):
            argv += ["--resume_from_checkpoint", "latest"]
        elif run_dir.exists() and any(run_dir.iterdir()):
            argv += ["--overwrite_output_dir"]  # started but never reached a checkpoint: start it again
        launcher = shlex.split(self.opts.launcher) if self.opts.launcher else [sys.executable]
        return [*launcher, *argv]

    def run_trial(self, trial, settings: dict[str, Any], bar) -> None:
        import optuna

        run_dir = self.opts.output_dir / f"trial_{trial.number:03d}"
        shown = ", ".join(f"{flag_of(k)}={report.show(v)}" for k, v in settings.items())
        trial.set_user_attr("run_dir", str(run_dir))
        results_file = run_dir / "results.json"
        started = time.monotonic()
        if not results_file.is_file():  # a trial whose run finished before the search was stopped is only told
            if self.stop_signal:
                raise TrainingInterrupted(f"Stopped before trial {trial.number} started. Rerun the same command to "
                                        "continue the search.", self.stop_signal)
            bar.write(f"Trial {trial.number}: {shown} (log: {run_dir / 'train.log'})")
            rc = self._spawn(trial, self.command(settings, run_dir), run_dir)
            if rc != 0 and self.stop_signal:
                raise TrainingInterrupted(f"Stopped during trial {trial.number}; its run kept its last checkpoint. "
                                        "Rerun the same command to continue the search.", self.stop_signal)
        wall = time.monotonic() - started
        if not results_file.is_file():
            error = last_error(run_dir / "train.log")
            trial.set_user_attr("error", error)
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            bar.write(f"Trial {trial.number} failed: {error}")
        else:
            results = json.loads(results_file.read_text())
            value = results["eval"][self.metric]
            for key in ("train_runtime_s", "peak_memory_bytes", "pruned_at_step", "global_step"):
                trial.set_user_attr(key, results.get(key))
            trial.set_user_attr("wall_s", round(wall, 1))
            pruned = results.get("pruned_at_step") is not None
            if pruned:
                self.study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            else:
                self.study.tell(trial, value)
            bar.write(f"Trial {trial.number}: validation {self.metric} {value:.4f}"
                      + (f" (pruned at step {results['pruned_at_step']})" if pruned else "")
                      + f", {results['train_runtime_s']:.0f} s of training")
        bar.update(1)
        self._show_best(bar)

    def _spawn(self, trial, cmd: list[str], run_dir: Path) -> int:
        """Run one trial's process, its output in run_dir/train.log; in its own session, so that a Ctrl-C reaches
        it once, through the search (see _on_signal), and ends with the search if that is killed."""
        run_dir.mkdir(parents=True, exist_ok=True)
        env = os.environ | {ENV: json.dumps({"journal": str((self.opts.output_dir / JOURNAL).resolve()),
                                             "study": STUDY_NAME, "trial_id": trial._trial_id,
                                             "pruner": self.opts.pruner})}
        with open(run_dir / "train.log", "a") as log:
            log.write(f"$ {shlex.join(cmd)}\n")
            log.flush()
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True, preexec_fn=_die_with_parent)
            try:
                while True:
                    try:
                        return self.proc.wait()
                    except InterruptedError:
                        continue
            finally:
                if self.proc.poll() is None:  # the search itself failed: do not leave the trial running alone
                    self.proc.terminate()
                    self.proc.wait()
                self.proc = None

    def _show_best(self, bar) -> None:
        try:
            best = self.study.best_trial
        except ValueError:
            return
        bar.set_postfix_str(f"best {self.metric} {best.value:.4f} (trial {best.number})")

    def evaluate_test(self, run_dir: str) -> dict[str, Any]:
        """The chosen configuration's test metrics (a separate `peftkit eval`); an error is reported, not raised."""
        data = json.loads((Path(run_dir) / CONFIG_FILE).read_text())["data"]
        if not has_test_split(data):
            return {"skipped": "the data has no test split (pass --test_file, or --test_dir for images, to have the "
                               "chosen configuration tested)"}
        out = Path(run_dir) / "test_metrics.json"
        cmd = [sys.executable, "-m", "peftkit", "eval", run_dir, "--split", "test", "--output_file", str(out)]
        log = Path(run_dir) / "test_eval.log"
        with open(log, "w") as fh:
            rc = subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT)
        if rc != 0 or not out.is_file():
            return {"error": last_error(log)}
        return json.loads(out.read_text())


def has_test_split(data: dict[str, Any]) -> bool:
    """Whether a run's data has a test split: local files and image folders only where one is given; the built-in
    and Hub datasets are asked (an absent split is then reported as the evaluation's error)."""
    if data.get("train_file"):
        return bool(data.get("test_file"))
    if data.get("train_dir"):
        return bool(data.get("test_dir"))
    return True


def _die_with_parent() -> None:
    """Linux: SIGTERM the trial if the search dies (even by SIGKILL), so that it checkpoints rather than runs on."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def last_error(log: Path) -> str:
    """What a failed trial said last: its `peftkit: error:` line (wherever a progress bar left it on the line),
    else the last line of its output."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return "no output"
    said = re.findall(r"peftkit: (?:error|stopped): ([^\r\n]*)", text)
    if said:
        return said[-1].strip()
    # progress bars redraw with carriage returns: split on them too
    lines = [line.strip() for line in re.split(r"[\r\n]+", text) if line.strip()]
    return lines[-1][:500] if lines else "no output"
