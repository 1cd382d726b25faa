"""text2live.optim.MADGRAD follows madgrad.MADGRAD bit for bit, with fewer dispatched operations."""

from __future__ import annotations

import copy

import madgrad
import pytest
import torch

from text2live.optim import MADGRAD


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.Conv2d(8, 4, 1))


def _train(model: torch.nn.Module, optimizer: torch.optim.Optimizer, steps: int) -> list[torch.Tensor]:
    torch.manual_seed(1)
    for _ in range(steps):
        x = torch.rand(2, 3, 12, 12)
        optimizer.zero_grad()
        model(x).pow(2).mean().backward()
        optimizer.step()
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize(
    "settings",
    [
        {"lr": 0.0025, "momentum": 0.9, "weight_decay": 0.01},  # conf/optim/madgrad.yaml
        {"lr": 0.01, "momentum": 0.0, "weight_decay": 0.0},
        {"lr": 0.01, "momentum": 0.5, "weight_decay": 0.1, "decouple_decay": True},
        {"lr": 0.01, "momentum": 0.9, "weight_decay": 0.0, "eps": 0.0},
    ],
)
def test_parameters_follow_the_package_bit_for_bit(settings):
    ours, theirs = _model(), _model()
    ours_params = _train(ours, MADGRAD(ours.parameters(), **settings), 6)
    theirs_params = _train(theirs, madgrad.MADGRAD(theirs.parameters(), **settings), 6)
    for a, b in zip(ours_params, theirs_params, strict=True):
        assert torch.equal(a, b)


def test_state_dicts_are_interchangeable():
    model = _model()
    ours = MADGRAD(model.parameters(), lr=0.01, momentum=0.9)
    _train(model, ours, 2)
    twin = copy.deepcopy(model)
    theirs = madgrad.MADGRAD(twin.parameters(), lr=0.01, momentum=0.9)
    theirs.load_state_dict(copy.deepcopy(ours.state_dict()))  # state_dict() shares the step counter
    ours_params, theirs_params = _train(model, ours, 3), _train(twin, theirs, 3)
    assert all(torch.equal(a, b) for a, b in zip(ours_params, theirs_params, strict=True))


def test_a_step_dispatches_a_few_operations_not_a_few_per_parameter():
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.n += 1
            return func(*args, **(kwargs or {}))

    def deep() -> torch.nn.Module:
        torch.manual_seed(0)
        return torch.nn.Sequential(*[torch.nn.Conv2d(3, 3, 1) for _ in range(12)])

    def ops(optimizer_class) -> int:
        model = deep()
        optimizer = optimizer_class(model.parameters(), lr=0.01, momentum=0.9, weight_decay=0.01)
        for _ in range(2):  # the first step also creates the state
            optimizer.zero_grad()
            model(torch.rand(2, 3, 12, 12)).sum().backward()
            if _ == 0:
                optimizer.step()
        Count.n = 0
        with Count():
            optimizer.step()
        return Count.n

    parameters = len(list(deep().parameters()))  # 24
    assert ops(MADGRAD) <= 15 < 5 * parameters <= ops(madgrad.MADGRAD)


def test_a_run_folder_written_with_the_package_class_resumes(tmp_path):
    from omegaconf import OmegaConf

    from text2live.errors import ConfigError
    from text2live.runs import CONFIG_FILE, check_same_run

    def config(target: str, lr: float = 0.0025) -> dict:
        return {"seed": 0, "optim": {"optimizer": {"_target_": target, "_partial_": True, "lr": lr}}}

    OmegaConf.save(OmegaConf.create(config("madgrad.MADGRAD")), tmp_path / CONFIG_FILE)
    assert check_same_run(tmp_path, config("text2live.optim.MADGRAD"))
    with pytest.raises(ConfigError, match="optim.optimizer.lr"):
        check_same_run(tmp_path, config("text2live.optim.MADGRAD", lr=0.01))
