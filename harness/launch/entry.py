"""The Hydra entry point shared by the benchmarks (``harness.bench.scaling``, ``harness.bench.generation``,
``harness.bench.toeplitz_bench``): a main that resolves the config, runs the benchmark and turns a
``ConfigError`` into one logged line and exit status 2 (the hardware profile is ``harness.launch.profile``).
"""
from __future__ import annotations

import logging
from typing import Callable

import hydra
from omegaconf import DictConfig

from harness.run.config import CONF_DIR, ConfigError, to_dict


def entry_point(config_name: str, main_with: Callable[[dict], object], log: logging.Logger) -> Callable[[], None]:
    """The Hydra main of ``conf/<config_name>.yaml``: ``main_with(config as a dict)``; a ``ConfigError``
    is logged as ``configuration error: ...`` and exits with status 2."""

    def main(cfg: DictConfig) -> None:
        try:
            main_with(to_dict(cfg))
        except ConfigError as err:
            log.error("configuration error: %s", err)
            raise SystemExit(2) from None

    # Hydra names the job (its log file, hydra.job.name) after the module of the function it unwraps:
    # the benchmark's, as when each benchmark declared its own main
    main.__wrapped__ = main_with
    return hydra.main(config_path=CONF_DIR, config_name=config_name, version_base="1.3")(main)
