"""scripts/benchmark.py: its record holds every figure, and its counter counts each dispatched aten op once."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

pytestmark = pytest.mark.usefixtures("one_thread")

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "benchmark.py"


@pytest.fixture(scope="module")
def benchmark():
    spec = importlib.util.spec_from_file_location("t2l_benchmark_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_op_counter_counts_each_dispatched_op(benchmark):
    x = torch.ones(3)
    with benchmark.OpCounter() as counter:
        y = torch.add(x, x)
        y = torch.add(y, x)
        torch.add(y, y)
    assert counter.counts == {"aten.add": 3}
    torch.add(x, x)  # after the mode: not counted
    assert sum(counter.counts.values()) == 3


class _Linear(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 2, bias=False)

    def training_step(self, batch, batch_idx):
        return self.layer(batch).square().sum()

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.ones(8, 4), batch_size=2)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, foreach=False)


def test_the_counted_window_holds_forward_backward_and_optimiser_step(benchmark):
    meter = benchmark.StepMeter(timed=1, warmup=0, counted=1)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=2,
        logger=False,
        callbacks=[meter],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(_Linear())
    assert len(meter.wall) == len(meter.cpu) == 1 and len(meter.ops) == 1
    ops = meter.ops[0]
    assert ops["aten.mm"] >= 2  # forward, and the weight's gradient in the backward pass
    assert ops["aten.add_"] >= 1  # SGD's update of the weight (optimizer step)


def test_record_of_a_small_run(benchmark, tmp_path: Path):
    path = tmp_path / "record.json"
    argv = ["--small", "--steps", "3", "--warmup", "1", "--count-steps", "1", "--json", str(path)]
    assert benchmark.main([*argv, "data.resize_input=96", "loss.n_aug=2"]) == 0
    record = json.loads(path.read_text())
    assert record["steps_timed"] == 2 and len(record["wall_s"]) == len(record["cpu_s"]) == 2
    for key in ("wall_s_min", "wall_s_median", "cpu_s_min", "cpu_s_median", "peak_rss_mib"):
        assert record[key] > 0, key
    assert record["ops_per_step_min"] > 0 and record["ops_per_step_median"] >= record["ops_per_step_min"]
    assert len(record["ops_top10"]) == 10
    assert {"aten.convolution", "aten.convolution_backward"} <= set(record["ops_by_name"])
    assert "loss.n_aug=2" in record["overrides"] and "clip=tiny" in record["overrides"]
    assert Path(record["text2live_file"]).resolve().parents[1] == SCRIPT.parents[1]
    assert record["torch"] == torch.__version__ and record["threads"] >= 1
    assert record["compiled_steps"] == [] and record["steps_left_out_compiling"] == 0


def test_more_views_add_few_operations_per_view(benchmark, tmp_path: Path):
    """The views of a step are built and embedded in batches: a view adds its own crop and resize and a share of
    each batched change, about 20 operations forward and backward (built one by one, a view took about 80)."""

    def ops(n_aug: int) -> float:
        path = tmp_path / f"record{n_aug}.json"
        argv = ["--small", "--steps", "1", "--warmup", "0", "--count-steps", "1", "--json", str(path)]
        assert benchmark.main([*argv, f"loss.n_aug={n_aug}"]) == 0
        return json.loads(path.read_text())["ops_per_step_min"]

    added_views = 4 * (10 - 4)  # four images a step (composition, direction in and out, screen)
    assert (ops(10) - ops(4)) / added_views < 30


def test_a_step_that_compiles_is_marked(benchmark, monkeypatch):
    """``measure`` leaves such steps out of the timings (compile=true: the first steps compile)."""
    events = iter([0, 1, 1, 1, 1, 1])  # read at the start and at the end of each timed step: step 0 compiled
    monkeypatch.setattr(benchmark, "compile_events", lambda: next(events))
    meter = benchmark.StepMeter(timed=3, warmup=0, counted=1)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=4,
        logger=False,
        callbacks=[meter],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(_Linear())
    assert meter.compiled == [True, False, False]


def test_each_variant_runs_with_its_overrides_after_the_shared_ones(benchmark, tmp_path: Path):
    both = "compile=true clip.checkpoint_views=true"
    args = benchmark.parse_args(["--small", "--steps", "4", "loss.n_aug=2", "--variants", "default", both])
    assert args.overrides == ["loss.n_aug=2"] and args.variants == ["default", both]
    assert benchmark.variant_overrides("default") == [] and benchmark.variant_overrides(" ") == []
    extra = benchmark.variant_overrides(args.variants[1])
    cmd = benchmark._worker_command(args, tmp_path, tmp_path / "out.json", None, extra)
    assert cmd[cmd.index("--") + 1 :] == ["loss.n_aug=2", "compile=true", "clip.checkpoint_views=true"]
    assert "--small" in cmd and cmd[cmd.index("--steps") + 1] == "4"
