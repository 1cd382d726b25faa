"""The training DataLoader: one sample per optimisation step, resumable at any step."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from torch.utils.data import DataLoader, IterableDataset


class StepLoader(DataLoader):
    """Serves the samples of the steps ``first_step() .. dataset.stop - 1`` of a step-indexed dataset.

    Every sample is a function of (seed, step) alone, so the loader's whole state is the trainer's step, which a
    checkpoint restores. ``first_step`` is read when iteration begins (after Lightning has restored the
    checkpoint), and the length is the run's total number of steps: Lightning counts a resumed epoch's batches on
    from the restored index, so with these two the resumed run trains exactly the steps it had not trained. The
    ``state_dict``/``load_state_dict`` pair tells Lightning the loader is resumable; the state itself is the step.
    """

    def __init__(self, dataset: IterableDataset, first_step: Callable[[], int]) -> None:
        super().__init__(dataset, batch_size=None, num_workers=0)
        self.first_step = first_step

    def __len__(self) -> int:
        return self.dataset.stop

    def __iter__(self) -> Iterator[Any]:
        self.dataset.start = self.first_step()
        return super().__iter__()

    def state_dict(self) -> dict[str, int]:
        return {"steps": self.dataset.stop}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Nothing to restore: the position is the trainer's step."""
