"""The packed dataset as the trainer's batch source (``--data-config`` / ``--data-path``).

Where the data flags enter: the mixture is read and checked here, and the one ``PackingConfig``
of the run is built here.  ``training/data.py`` sizes the blend for the whole run
(``train_iters x global_batch_size`` packs) so that a resumed run, starting at the checkpoint's
``consumed_samples``, reads exactly the packs it would have read without a stop.
"""

from __future__ import annotations

import numpy as np
import torch

from megatron_mio.data.mixture import read_mixture
from megatron_mio.data.packed_dataset import PackingConfig
from megatron_mio.data.sampler import build_pretraining_dataloader
from megatron_mio.data.validate import validate_packed_source
from megatron_mio.training.arguments import ConfigError
from megatron_mio.training.config import DataConfig


def packing_config(data: DataConfig, seq_length: int, pad_id: int, table: np.ndarray | None) -> PackingConfig:
    return PackingConfig(seq_length=seq_length, seed=data.seed, pad_id=pad_id, modality_table=table)


def packed_loader(data: DataConfig, seq_length: int, pad_id: int, table: np.ndarray | None, num_samples: int,
                  validation: bool, **placement) -> torch.utils.data.DataLoader:
    """This rank's loader over the run's blend of ``num_samples`` packs (``placement``: the
    sampler's micro-batch size, data-parallel rank and size, consumed samples); ``validation``
    reads the --valid-data-* sources."""
    if validation:
        mixture = read_mixture(data.valid_data_config, _paths(data.valid_data_path))
    else:
        mixture = read_mixture(data.data_config, _paths(data.data_path))
    return build_pretraining_dataloader(mixture, packing_config(data, seq_length, pad_id, table),
                                        num_samples=num_samples, num_workers=data.num_workers, **placement)


def check_sources(data: DataConfig) -> None:
    """Read every mixture and index the run will open, before any model exists: a missing prefix
    or a mistyped mixture key is one line naming the flag."""
    for flag, config_file, paths in (("--data-config", data.data_config, data.data_path),
                                     ("--valid-data-config", data.valid_data_config, data.valid_data_path)):
        if not config_file and not paths:
            continue
        named = f"{flag} {config_file}" if config_file else flag.replace("-config", "-path")
        try:
            mixture = read_mixture(config_file, _paths(paths))
            for data_type in mixture.types:
                for prefix in data_type.prefixes:
                    validate_packed_source(prefix)
        except (ValueError, OSError) as err:  # MixtureError, DataFileError, an unreadable file
            raise ConfigError(f"{named}: {err}") from None


def _paths(paths: tuple[str, ...] | None) -> list[str] | None:
    return list(paths) if paths else None
