"""``t2l-atlas``: train a Neural Layered Atlas on a video, for ``t2l-train experiment=video``. Every config value
(conf/atlas.yaml) can be overridden on the command line."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, open_dict
from omegaconf.errors import OmegaConfBaseException

from text2live.cli.common import check_overrides, fail, one_line_errors
from text2live.config import CONF_DIR

NO_NAME = "name is not set: pass name=<the video's name> (the run folder is outputs/atlas/<name>)"


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="atlas")
def _hydra_main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN:
        with open_dict(cfg):
            cfg.run_dir = hydra_cfg.runtime.output_dir
    with one_line_errors("training the atlas"):
        from text2live.atlas.training import edit_command, train_atlas

        run_dir = train_atlas(cfg, overrides=list(hydra_cfg.overrides.task))
        if (run_dir / "DONE").is_file():
            print(
                f"Edit the video through this NLA (your prompts in place of ...):\n  {edit_command(run_dir, cfg.name)}"
            )


def main() -> None:
    cfg = check_overrides("atlas", sys.argv[1:], "t2l-atlas")
    if cfg is not None:
        try:
            run_dir = Path(cfg.run_dir)
        except OmegaConfBaseException:
            fail(NO_NAME)
        from text2live.training import check_run_dir

        with one_line_errors("training the atlas"):
            check_run_dir(run_dir)  # before Hydra creates the folder for its log
    _hydra_main()


if __name__ == "__main__":
    main()
