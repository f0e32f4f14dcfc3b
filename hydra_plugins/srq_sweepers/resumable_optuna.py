"""Optuna sweeper whose study resumes where a killed sweep stopped.

``hydra.sweeper.n_trials`` counts the trials of the whole study: rerunning the same command
with ``hydra.sweep.dir=<the sweep dir>`` (its SQLite storage lies there) runs only the
trials still missing. Trials the kill left RUNNING are marked FAIL (their overrides are in
the study; run them again by hand if needed), job numbers continue after the study's last
trial (run dirs never collide), and a seeded sampler is reseeded with seed + trials so far
(a resumed study does not repeat the startup trials it already ran). Needs a fixed
``study_name``; GridSampler studies keep the upstream behaviour (run ``n_trials`` again).
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

try:
    from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper
except ImportError:  # the optuna sweeper is an extra: pip install "srq[sweep]"
    OptunaSweeper = None

log = logging.getLogger(__name__)

if OptunaSweeper is not None:

    class ResumableOptunaSweeper(OptunaSweeper):
        """:class:`OptunaSweeper` with resumable studies (see the module docstring)."""

        def sweep(self, arguments):
            impl = self.sweeper
            storage = impl.storage
            if isinstance(storage, str) and storage.startswith("sqlite:///"):
                Path(storage[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
            if storage and not isinstance(impl.sampler, functools.partial):
                self._resume(impl)  # GridSampler (a partial until sweep()): upstream behaviour
            return impl.sweep(arguments)

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
            impl.job_idx = len(trials)
            seed = impl.config.hydra.sweeper.sampler.get("seed")
            sampler = impl.sampler
            if seed is not None and hasattr(sampler, "_rng"):
                sampler._rng = np.random.RandomState(int(seed) + len(trials))
                if hasattr(sampler, "_random_sampler"):
                    sampler._random_sampler = optuna.samplers.RandomSampler(seed=int(seed) + len(trials))
            log.info("resuming study %s: %d of %d trials complete, %d to run", impl.study_name,
                     done, wanted, impl.n_trials)
