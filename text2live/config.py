"""Where the Hydra configs live, and the resolvers they use."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

PACKAGE_DIR = Path(__file__).resolve().parent
CONF_DIR = PACKAGE_DIR.parent / "conf"
ASSETS_DIR = PACKAGE_DIR / "assets"


def register_resolvers() -> None:
    """``${asset:cat.png}``: a file shipped with text2live; ``${min_side:7}``: the generator's smallest input."""
    if not OmegaConf.has_resolver("asset"):
        OmegaConf.register_new_resolver("asset", lambda name: str(ASSETS_DIR / name))
    if not OmegaConf.has_resolver("min_side"):
        OmegaConf.register_new_resolver("min_side", lambda scales: 2 ** int(scales) + 1)


register_resolvers()
