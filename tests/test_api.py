"""The Python API (text2live.api) end to end with the tiny CLIP: edit an image in one call, re-render a run."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY

from text2live import api
from text2live.errors import ConfigError
from text2live.io import load_image

PROMPTS = {"comp_text": "golden cat", "src_text": "cat", "screen_text": "golden", "bootstrap_text": "cat"}


def test_edit_image_returns_the_layers_and_keeps_the_run_folder_when_asked(small_cat, tmp_path):
    run_dir = tmp_path / "run"
    result = api.edit_image(small_cat, run_dir=run_dir, overrides=TINY, **PROMPTS, **{"loss.lambda_structure": 3.0})
    image = load_image(small_cat, 96)
    assert result.edit.shape == image.shape and result.alpha.shape == (1, *image.shape[1:])
    for layer in (result.edit, result.alpha, result.composite, result.edit_on_greenscreen):
        assert layer.dtype == torch.float32 and layer.min() >= 0 and layer.max() <= 1
    expected = (1 - result.alpha) * image + result.alpha * result.edit
    torch.testing.assert_close(result.composite, expected, rtol=0, atol=1e-6)
    assert result.rgba.shape == (4, *image.shape[1:])
    assert result.run_dir == run_dir and (run_dir / "DONE").is_file()
    assert (run_dir / "train.log").read_text().count("finished") == 1
    assert result.metrics["clip_score"] == pytest.approx(result.metrics["clip_score"]) and "preservation_psnr" in (
        result.metrics
    )
    saved = (run_dir / "config.yaml").read_text()
    assert "lambda_structure: 3.0" in saved and "comp_text: golden cat" in saved

    again = api.render_run(run_dir)  # the same layers from the run's checkpoint
    torch.testing.assert_close(again.composite, result.composite, rtol=0, atol=0)
    assert again.metrics == result.metrics

    other = api.render_run(run_dir, image=small_cat)
    torch.testing.assert_close(other.alpha, result.alpha, rtol=0, atol=0)

    finished = api.edit_image(small_cat, run_dir=run_dir, overrides=TINY, **PROMPTS, **{"loss.lambda_structure": 3.0})
    torch.testing.assert_close(finished.edit, result.edit, rtol=0, atol=0)  # a finished run is not trained again
    assert (run_dir / "train.log").read_text().count("is finished (DONE): nothing to do") == 1


def test_without_a_run_folder_nothing_is_left_behind(small_cat, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    result = api.edit_image(small_cat, overrides=TINY, evaluate=False, **PROMPTS)
    assert result.run_dir is None and result.metrics == {}
    assert result.composite.shape[0] == 3
    assert list((tmp_path / "tmp").iterdir()) == [] and not (tmp_path / "outputs").exists()


def test_keyword_settings_select_config_groups_and_set_values():
    cfg = api.compose(clip="tiny", experiment="golden_cat", loss__lambda_structure=5.0, steps=7)
    assert cfg.clip.name == "tiny"
    assert cfg.loss.lambda_structure == 5.0 and cfg.steps == 7 and cfg.comp_text


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"lamda_structure": 3}, "unknown config key 'lamda_structure'"),
        ({"clip": "nope"}, "the config cannot be composed"),
    ],
)
def test_bad_settings_are_one_sentence(settings, message):
    with pytest.raises(ConfigError, match=message) as caught:
        api.compose(**settings)
    assert "\n" not in str(caught.value)


def test_a_video_config_is_sent_to_the_command():
    with pytest.raises(ConfigError, match="edits a video"):
        api.edit_image(experiment="video", overrides=["clip=tiny"])
