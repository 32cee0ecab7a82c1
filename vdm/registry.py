"""One table per list of names: what a config key or a command-line flag may name, and what each name means.

A `Registry` is a read-only mapping name -> entry. The code that uses the
entries looks them up (`lookup`), and `vdm.config.validation` checks the
config keys against the same table, so a name is added in one place and an
unknown one is reported with the keys it could have been:

| registry                            | entries                         | chosen by                    |
|-------------------------------------|---------------------------------|------------------------------|
| `vdm.core.schedules.SCHEDULES`      | schedule classes                | `schedule.name`              |
| `vdm.core.diffusion.PREDICTIONS`    | what the network predicts       | `model.prediction`           |
| `vdm.core.weightings.WEIGHTINGS`    | weightings w(λ) of the loss     | `loss.weighting`             |
| `vdm.sampling.SAMPLERS`             | samplers and their descriptions | `eval.sampler`, `--sampler`  |
| `vdm.core.elbo_estimator.TIME_DENSITIES` | proposals of log-SNR in eval | `eval.time_density`          |
| `vdm.data.augment.AUGMENTATIONS`    | augmentation group sizes        | `data.augmentation`          |
| `vdm.data.datasets.DATASETS`        | dataset specs                   | `data.name`                  |
| `vdm.nets.ops.IMPLS`                | network implementations         | `model.impl` (and `auto`)    |
| `vdm.sampling.grids.GRIDS`          | time grids of every sampler     | their `grid=` argument       |

A new list of names gets its own
registry beside the code it selects, and one line in
`vdm.config.validation.registries`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping


class Registry(Mapping):
    """A read-only mapping name -> entry whose `lookup` names the known keys when a name is unknown."""

    def __init__(self, kind: str, entries: Mapping):
        self.kind = kind  # what an entry is, for messages: 'schedule', 'sampler', ...
        self._entries = dict(entries)

    def __getitem__(self, name: str):
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, name: str):
        """The entry of `name`; ValueError naming every key if there is none."""
        if name not in self._entries:
            raise ValueError(f"unknown {self.kind} {name!r}; expected one of {list(self._entries)}")
        return self._entries[name]

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {list(self._entries)})"
