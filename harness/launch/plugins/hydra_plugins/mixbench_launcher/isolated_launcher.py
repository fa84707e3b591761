"""Hydra finds launchers only under ``hydra_plugins``: this is the name of mixbench's isolated
parallel launcher (``harness.launch.isolated``), configured as joblib's (``n_jobs``)."""
from __future__ import annotations

from typing import Sequence

from hydra.core.utils import JobReturn
from hydra_plugins.hydra_joblib_launcher.joblib_launcher import JoblibLauncher


class IsolatedLauncher(JoblibLauncher):
    """joblib's launcher, with each job in a worker of its own slot: a dead worker costs only its job."""

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from harness.launch import isolated

        return isolated.launch(self, job_overrides, initial_job_idx)
