"""``hydra/launcher=fused``: the sweep's runs that differ only in learning rate, weight decay or seed
train together in one process (``harness.launch.fused``); the groups run one after another."""
from __future__ import annotations

from typing import Sequence

from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class FusedLauncher(Launcher):
    def __init__(self) -> None:
        super().__init__()
        self.config = self.task_function = self.hydra_context = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from harness.launch.fused import launch_fused  # the work lives in the project, not in the plug-in

        return launch_fused(self.hydra_context, self.config, job_overrides, initial_job_idx)
