"""Turn a generator trained with the reference code (omerbt/Text2LIVE) into a text2live run folder.

    python scripts/import_reference_generator.py netG.pt --image horse.jpg --out outputs/imported/horse
    t2l-render run_dir=outputs/imported/horse

The reference saves its generator as a state dict of nested nn.Sequential modules (keys like "1.0.1.1.weight");
`netG.pt` may be that state dict or a dict holding it under "netG" or "state_dict". Generator settings other
than the reference defaults (128/128/4 channels, 7 scales) are given as overrides, e.g. generator.num_scales=6.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from text2live import runs
from text2live.checkpoints import read_checkpoint, save_checkpoint
from text2live.config import CONF_DIR
from text2live.errors import Text2LiveError
from text2live.generator import convert_reference_state_dict


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("state_dict", type=Path, help="the reference generator's saved state dict")
    parser.add_argument("--image", required=True, help="the image the generator was trained on")
    parser.add_argument("--out", type=Path, required=True, help="the run folder to create")
    parser.add_argument("overrides", nargs="*", help="generator overrides, e.g. generator.num_scales=6")
    args = parser.parse_intermixed_args()

    if (args.out / runs.CONFIG_FILE).exists():
        sys.exit(f"error: {args.out} already holds a run: choose another --out")
    if not args.state_dict.is_file():
        sys.exit(f"error: {args.state_dict} does not exist: pass the reference generator's state dict file")
    try:
        state = read_checkpoint(args.state_dict)
    except Text2LiveError as exc:
        sys.exit(f"error: {exc}: pass the reference generator's state dict file")
    for key in ("netG", "state_dict"):
        if isinstance(state.get(key), dict):
            state = state[key]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                f"image_path={Path(args.image).resolve()}",
                "comp_text=imported",
                "src_text=imported",
                "screen_text=imported",
                f"run_dir={args.out}",
                "name=imported",
                *args.overrides,
            ],
        )
    generator = instantiate(cfg.generator)
    try:
        converted = convert_reference_state_dict(state, generator)
    except ValueError as exc:
        sys.exit(f"error: {exc}")
    generator.load_state_dict(converted)

    runs.write_run_info(args.out, OmegaConf.to_container(cfg, resolve=True))
    ckpt_dir = args.out / runs.CHECKPOINT_DIR
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    state_dict = {f"generator.{k}": v for k, v in generator.state_dict().items()}
    save_checkpoint({"state_dict": state_dict, "imported_from": str(args.state_dict)}, ckpt_dir / runs.FINAL_CHECKPOINT)
    print(f"wrote {args.out}; render it with: t2l-render run_dir={args.out}")


if __name__ == "__main__":
    main()
