"""Optuna sweeper whose study resumes where a killed sweep stopped.

``hydra.sweeper.n_trials`` counts the trials of the whole study: rerunning the same command
with ``hydra.sweep.dir=<the sweep dir>`` (its SQLite storage lies there) runs only the
trials still missing. Trials the kill left RUNNING are marked FAIL (their overrides are in
the study; run them again by hand if needed), job numbers continue after the study's last
trial and after the run dirs already there (run dirs never collide), and a seeded sampler is
reseeded with seed + trials so far (a resumed study does not repeat its startup trials).
Needs a fixed ``study_name``; GridSampler studies keep the upstream behaviour (run
``n_trials`` again).

``hydra/sweeper=srq_optuna`` (this sweeper's config: Optuna's plus ``enqueue_trials``) runs
the given parameter sets first — e.g. the method's current defaults, so the study's best can
only be at least as good as them on the optimized metric. Each is enqueued once per study (a
resume queues it again only when that trial failed or was killed); grid sweeps ignore it.
"""

import functools
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List

try:
    from hydra_plugins.hydra_optuna_sweeper.config import OptunaSweeperConf
    from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper
except ImportError:  # the optuna sweeper is an extra: pip install "srq[sweep]"
    OptunaSweeper = None

log = logging.getLogger(__name__)


def _next_job_number(config) -> int:
    """1 + the largest ``<n>_…`` run dir in the sweep dir (0 when there is none)."""
    try:
        sweep_dir = Path(str(config.hydra.sweep.dir))
    except (AttributeError, KeyError):  # no sweep dir in the config
        return 0
    numbers = [int(p.name.split("_", 1)[0]) for p in sweep_dir.glob("*_*")
               if p.is_dir() and p.name.split("_", 1)[0].isdigit()]
    return max(numbers, default=-1) + 1

if OptunaSweeper is not None:

    from hydra.core.config_store import ConfigStore

    @dataclass
    class ResumableOptunaSweeperConf(OptunaSweeperConf):
        _target_: str = "hydra_plugins.srq_sweepers.resumable_optuna.ResumableOptunaSweeper"
        # parameter sets ({override key: value}) run as the study's first trials
        enqueue_trials: List[Dict[str, Any]] = field(default_factory=list)

    ConfigStore.instance().store(group="hydra/sweeper", name="srq_optuna",
                                 node=ResumableOptunaSweeperConf, provider="srq")

    class ResumableOptunaSweeper(OptunaSweeper):
        """:class:`OptunaSweeper` with resumable studies (see the module docstring)."""

        def __init__(self, *args, enqueue_trials=(), **kwargs):
            super().__init__(*args, **kwargs)
            from omegaconf import OmegaConf

            self.enqueue_trials = [OmegaConf.to_container(p, resolve=True) if OmegaConf.is_config(p)
                                   else dict(p) for p in enqueue_trials or ()]

        def sweep(self, arguments):
            impl = self.sweeper
            storage = impl.storage
            if isinstance(storage, str) and storage.startswith("sqlite:///"):
                Path(storage[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
            grid = isinstance(impl.sampler, functools.partial)  # GridSampler, until sweep()
            if storage and not grid:
                self._resume(impl)  # GridSampler: upstream behaviour
            if self.enqueue_trials and grid:
                log.warning("hydra.sweeper.enqueue_trials ignored: a grid sweep runs every point")
            elif self.enqueue_trials:
                self._enqueue(impl, self.enqueue_trials)
            return impl.sweep(arguments)

        @staticmethod
        def _enqueue(impl, param_sets: list[dict]) -> None:
            import optuna
            from optuna.trial import TrialState

            if not impl.storage or not impl.study_name:
                raise ValueError("hydra.sweeper.enqueue_trials needs hydra.sweeper.storage and "
                                 "hydra.sweeper.study_name (the study is made before its first trial)")
            study = optuna.create_study(study_name=impl.study_name, storage=impl.storage,
                                        directions=impl._get_directions(), load_if_exists=True)
            # queued by an earlier run of this study, unless that trial failed or was killed
            queued = [t.system_attrs.get("fixed_params") for t in study.get_trials(deepcopy=False)
                      if t.state != TrialState.FAIL]
            for params in param_sets:
                if params in queued:
                    continue
                study.enqueue_trial(params)
                log.info("queued: %s", params)
                queued.append(params)

        @staticmethod
        def _resume(impl) -> None:
            import numpy as np
            import optuna
            from optuna.trial import TrialState

            try:
                study = optuna.load_study(study_name=impl.study_name, storage=impl.storage)
            except (KeyError, ValueError):  # a new study (or no study_name: upstream makes one)
                return
            trials = study.get_trials(deepcopy=False)
            for trial in trials:
                if trial.state == TrialState.RUNNING:
                    study._storage.set_trial_state(trial._trial_id, TrialState.FAIL)
                    log.warning("trial %d was interrupted (marked FAIL): %s", trial.number,
                                trial.params)
            done = sum(t.state == TrialState.COMPLETE for t in trials)
            wanted = impl.n_trials
            impl.n_trials = max(0, wanted - done)
            # job numbers = trial numbers (queued WAITING trials are asked first, in order), and
            # after every run dir already in the sweep dir (studies numbered by older versions)
            impl.job_idx = max(sum(t.state != TrialState.WAITING for t in trials),
                               _next_job_number(impl.config))
            seed = impl.config.hydra.sweeper.sampler.get("seed")
            sampler = impl.sampler
            if seed is not None and hasattr(sampler, "_rng"):
                sampler._rng = np.random.RandomState(int(seed) + len(trials))
                if hasattr(sampler, "_random_sampler"):
                    sampler._random_sampler = optuna.samplers.RandomSampler(seed=int(seed) + len(trials))
            log.info("resuming study %s: %d of %d trials complete, %d to run", impl.study_name,
                     done, wanted, impl.n_trials)
