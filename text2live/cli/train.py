"""``t2l-train``: edit an image or a video with Text2LIVE. Every config value can be overridden on the command line."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, open_dict
from omegaconf.errors import OmegaConfBaseException

from text2live.cli.common import CommandFailed, check_overrides, one_line_errors
from text2live.config import CONF_DIR
from text2live.errors import JobError


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def _hydra_main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        with one_line_errors("training"):
            from text2live.training import train

            train(cfg, overrides=list(hydra_cfg.overrides.task))
        return
    # a job run in the launcher's own process (Hydra's basic launcher, submitit, Ray): its run folder is its sweep
    # folder, and an error reaches the launcher as an exception, not as the end of the process
    with open_dict(cfg):
        cfg.run_dir = hydra_cfg.runtime.output_dir
    try:
        with one_line_errors("training"):
            from text2live.training import train

            train(cfg, overrides=list(hydra_cfg.overrides.task))
    except CommandFailed as exc:
        raise JobError(exc.message, exc.code) from None


def main() -> None:
    cfg = check_overrides("train", sys.argv[1:], "t2l-train")
    if cfg is not None:
        try:
            run_dir = Path(cfg.run_dir)
        except OmegaConfBaseException:
            run_dir = None  # a missing value in the folder's name is reported once the run starts
        if run_dir is not None:
            from text2live.training import check_run_dir

            with one_line_errors("training"):
                check_run_dir(run_dir)  # before Hydra creates the folder for its log
    _hydra_main()


if __name__ == "__main__":
    main()
