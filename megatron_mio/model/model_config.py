"""How a model is built for one run, beside what it is (``presets.ModelPreset``).

Three frozen facts that several components read and only the trainer's arguments decide: the
parallel layout (sizes under Megatron-LM's names, the same keys a checkpoint records), the
precision (one value, from which every dtype and flag follows) and activation recomputation.
``gpt.build_transformer_config`` turns them into megatron-core's ``TransformerConfig``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass(frozen=True)
class ParallelLayout:
    tensor_model_parallel_size: int = 1
    pipeline_model_parallel_size: int = 1
    virtual_pipeline_model_parallel_size: int | None = None
    data_parallel_size: int = 1
    sequence_parallel: bool = False

    @property
    def num_model_chunks(self) -> int:
        """Model chunks per rank: one, or one per virtual pipeline stage."""
        return self.virtual_pipeline_model_parallel_size or 1

    @property
    def world_size(self) -> int:
        return self.tensor_model_parallel_size * self.pipeline_model_parallel_size * self.data_parallel_size


SINGLE_RANK = ParallelLayout()


@dataclass(frozen=True)
class Precision:
    """The weights' and activations' dtype, and how fp16 scales its loss."""

    name: str = "fp32"  # one of PRECISIONS
    grad_reduce_in_fp32: bool = False  # sum gradients over micro-batches and DP ranks in fp32
    loss_scale: float | None = None  # fp16 static loss scale; None: dynamic
    initial_loss_scale: float = 2.0**32
    min_loss_scale: float = 1.0

    def __post_init__(self):
        if self.name not in PRECISIONS:
            raise ValueError(f"precision {self.name!r} is not one of {PRECISIONS}")

    @property
    def bf16(self) -> bool:
        return self.name == "bf16"

    @property
    def fp16(self) -> bool:
        return self.name == "fp16"

    @property
    def dtype(self) -> "torch.dtype":
        import torch  # here, not at the top: the trainer's --help imports this module

        return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[self.name]


FP32 = Precision("fp32")
BF16 = Precision("bf16", grad_reduce_in_fp32=True)


@dataclass(frozen=True)
class Recompute:
    """Megatron-LM's ``--recompute-*`` settings (None: keep every activation)."""

    granularity: str | None = None  # "full" or "selective"
    method: str | None = None  # "uniform" or "block"
    num_layers: int | None = None


NO_RECOMPUTE = Recompute()
