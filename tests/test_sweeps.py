"""Sweeps at scale: a resumable Optuna study on the validation metric, parallel and cluster
launchers (joblib, submitit), run as a user would."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_helpers import srq
from hydra import compose, initialize_config_module

pytest.importorskip("optuna")

# a DQC study small enough for the CPU: 1 fine-tuning step, 8 patches, 1 test image, 2 val images
TINY_DQC = ["hparams_search=dqc_optuna", "model=imdn_x4", "bits=w4a4", "data=set5",
            "method.dqc.iterations=1", "method.calib.num_patches=8", "method.dqc.num_patches=8",
            "eval.limit_images=1", "val.num_images=2", "logger=none"]


def _trials(db: Path) -> list[tuple[int, str, float | None]]:
    with sqlite3.connect(db) as con:
        return con.execute("select t.number, t.state, v.value from trials t left join "
                           "trial_values v on v.trial_id = t.trial_id order by t.number").fetchall()


def _n_complete(db: Path) -> int:
    """COMPLETE trials in a study being written by another process (0 while unreadable)."""
    try:
        return sum(state == "COMPLETE" for _, state, _ in _trials(db)) if db.exists() else 0
    except sqlite3.OperationalError:  # not created yet, or locked by the writer
        return 0


def _results(sweep: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(sweep.glob("*/results.json"))]


def test_optuna_study_is_killed_after_two_trials_and_resumes_to_four(data_dir, tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", *TINY_DQC, "hydra.sweeper.n_trials=4", f"hydra.sweep.dir={sweep}"]
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "srq", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.time() + 600
    # wait for the study to record 2 trials (a run's results.json is written before its trial
    # is told to the study: killing between the two would leave 1 COMPLETE)
    while _n_complete(sweep / "optuna.db") < 2 and proc.poll() is None:
        assert time.time() < deadline, "two trials took over 10 minutes"
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)  # as a scheduler's kill or a lost ssh session would
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the sweep ended before it was killed"
    first = _trials(sweep / "optuna.db")
    assert sum(state == "COMPLETE" for _, state, _ in first) == 2
    assert len(_results(sweep)) == 2

    again = srq(args, tmp_path, module=True)
    assert again.returncode == 0, again.stderr[-3000:]
    trials = _trials(sweep / "optuna.db")
    complete = [(n, v) for n, state, v in trials if state == "COMPLETE"]
    assert len(complete) == 4, trials
    # the interrupted trial (if one was running) is marked FAIL, never left RUNNING
    assert {state for _, state, _ in trials} <= {"COMPLETE", "FAIL"}
    runs = _results(sweep)
    assert len(runs) == 4 and len({r["config"]["paths"]["output_dir"] for r in runs}) == 4
    # each trial's value is its run's val/psnr_y (held-out images), not a test-set number
    assert sorted(v for _, v in complete) == pytest.approx(sorted(r["val"]["psnr_y"] for r in runs))
    assert all(r["val"]["n_images"] == 2 and r["method"] == "2dquant" for r in runs)
    # the fixed key stayed fixed, the searched ones were searched and differ across trials
    assert {r["config"]["method"]["dqc"]["iterations"] for r in runs} == {1}
    assert len({r["config"]["method"]["dqc"]["lr"] for r in runs}) == 4
    # trial 0 is the enqueued defaults (hydra.sweeper.enqueue_trials), queued once per study
    first_run = next(r for r in runs if Path(r["config"]["paths"]["output_dir"]).name.startswith("0_"))
    dqc = first_run["config"]["method"]["dqc"]
    assert (dqc["lr"], dqc["feat_weight"], dqc["batch_size"]) == (1e-2, 5.0, 4)
    with sqlite3.connect(sweep / "optuna.db") as con:
        queued = con.execute("select count(*) from trial_system_attributes "
                             "where key = 'fixed_params'").fetchone()[0]
    assert queued == 1
    best = (sweep / "optimization_results.yaml").read_text()
    assert f"best_value: {max(v for _, v in complete)}" in best


def test_joblib_runs_jobs_in_parallel_sharing_the_cores(data_dir, tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    proc = srq(["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "model=imdn_x4",
                "method=fp", "seed=0,1", "eval.limit_images=1", "val.num_images=1", "logger=none",
                f"hydra.sweep.dir={tmp_path / 'sweep'}"], tmp_path, module=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = _results(tmp_path / "sweep")
    assert sorted(r["seed"] for r in runs) == [0, 1]
    cores = len(os.sched_getaffinity(0))
    assert {r["torch_threads"] for r in runs} == {max(1, cores // 2)}
    assert "Joblib.Parallel" in proc.stderr + proc.stdout or "joblib" in proc.stderr.lower()


def test_submitit_local_runs_a_two_job_multirun(data_dir, tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    sweep = tmp_path / "sweep"
    proc = srq(["-m", "hydra/launcher=submitit_local", "hydra.launcher.cpus_per_task=1",
                "model=imdn_x4", "method=fp", "seed=0,1", "eval.limit_images=1", "val.num_images=1",
                "logger=none", f"hydra.sweep.dir={sweep}"], tmp_path, module=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = _results(sweep)
    assert sorted(r["seed"] for r in runs) == [0, 1]
    assert {r["torch_threads"] for r in runs} == {1}
    assert {r["metrics"]["Set5"]["n_images"] for r in runs} == {1}
    # each job ran in its own submitit process with its own log
    assert len(list((sweep / ".submitit").glob("*/*_log.out"))) == 2


def test_slurm_preset_becomes_an_sbatch_array_script(tmp_path):
    """hydra/launcher=slurm, rendered by submitit's own sbatch writer as the plugin calls it."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from submitit.slurm.slurm import _make_sbatch_string

    with initialize_config_module(config_module="srq.conf", version_base="1.3"):
        cfg = compose(config_name="config", return_hydra_config=True, overrides=[
            "hydra/launcher=slurm", "hydra.launcher.partition=gpu-a100", "hydra.launcher.timeout_min=90",
            "hydra.launcher.array_parallelism=4", "hydra.sweep.dir=/tmp/s"])
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    text = _make_sbatch_string(
        command="python -m submitit.core._submit", folder=tmp_path, partition=launcher.partition,
        time=launcher.timeout_min, gpus_per_node=launcher.gpus_per_node,
        cpus_per_task=launcher.cpus_per_task, mem=f"{launcher.mem_gb}GB",
        array_parallelism=launcher.array_parallelism, map_count=6)
    for line in ("#SBATCH --partition=gpu-a100", "#SBATCH --time=90", "#SBATCH --gpus-per-node=1",
                 "#SBATCH --cpus-per-task=8", "#SBATCH --mem=32GB", "#SBATCH --array=0-5%4"):
        assert line in text, (line, text)


def test_resume_numbers_jobs_after_the_run_trials_when_a_queued_trial_waits(tmp_path):
    """A study with 2 finished trials, 1 killed (RUNNING) and 1 queued (WAITING): resuming
    marks the killed one FAIL, counts 2 complete, and gives the queued trial 3 job number 3."""
    import optuna
    from omegaconf import OmegaConf

    from hydra_plugins.srq_sweepers.resumable_optuna import ResumableOptunaSweeper

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    for x in (1.0, 2.0):
        study.add_trial(optuna.trial.create_trial(
            params={"x": x}, distributions={"x": optuna.distributions.UniformDistribution(0, 5)},
            value=x))
    study.ask()                      # left RUNNING, as by a kill
    study.enqueue_trial({"x": 3.0})  # the defaults, queued but never started
    impl = type("Impl", (), {})()
    impl.study_name, impl.storage, impl.n_trials = "s", storage, 6
    impl.config = OmegaConf.create({"hydra": {"sweeper": {"sampler": {"seed": 1}},
                                              "sweep": {"dir": str(tmp_path)}}})
    impl.sampler = optuna.samplers.TPESampler(seed=1)
    impl._get_directions = lambda: [optuna.study.StudyDirection.MAXIMIZE]
    ResumableOptunaSweeper._resume(impl)
    states = [t.state.name for t in optuna.load_study(study_name="s", storage=storage).trials]
    assert states == ["COMPLETE", "COMPLETE", "FAIL", "WAITING"]
    assert (impl.n_trials, impl.job_idx) == (4, 3)
    # queuing the same defaults again adds nothing; queuing them after their trial failed does
    ResumableOptunaSweeper._enqueue(impl, [{"x": 3.0}])
    assert len(optuna.load_study(study_name="s", storage=storage).trials) == 4
    waiting = optuna.load_study(study_name="s", storage=storage).trials[3]
    optuna.load_study(study_name="s", storage=storage)._storage.set_trial_state(
        waiting._trial_id, optuna.trial.TrialState.FAIL)
    ResumableOptunaSweeper._enqueue(impl, [{"x": 3.0}])
    states = [t.state.name for t in optuna.load_study(study_name="s", storage=storage).trials]
    assert states == ["COMPLETE", "COMPLETE", "FAIL", "FAIL", "WAITING"]
    # a run dir numbered past the study (an older version's numbering) moves the next job on
    (tmp_path / "7_imdn_x4_2dquant_w4a4_set5").mkdir()
    ResumableOptunaSweeper._resume(impl)
    assert impl.job_idx == 8
