"""``t2l-render run_dir=<run>``: apply a finished run's generator(s) without training.

An image run's generator edits its image or another one; a video run's generators re-render its video.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from text2live.cli.common import check_overrides, one_line_errors
from text2live.config import CONF_DIR


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="render")
def _hydra_main(cfg: DictConfig) -> None:
    with one_line_errors("rendering"):
        from text2live.render import render

        out = render(cfg.run_dir, cfg.image_path, cfg.out_dir)
    print(f"wrote {out}")


def main() -> None:
    check_overrides("render", sys.argv[1:], "t2l-render")
    _hydra_main()


if __name__ == "__main__":
    main()
