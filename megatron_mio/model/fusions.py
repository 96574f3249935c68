"""Which of megatron-core's fused kernels the model uses: decided from what actually imports.

A fusion is switched on when its kernel can run in this process, and never because of the
device alone: the CPU runs exactly the fusions a GPU without the extras would run, so the GPU
configuration is built and trained in the CPU test suite.  This is the one place that decides.

==========================  ====================================  =================================
TransformerConfig field     kernel it needs                       on when
==========================  ====================================  =================================
bias_activation_fusion      megatron's SwiGLU, ``torch.compile``  a compiler backend for the device
bias_dropout_fusion         megatron's bias-dropout-add,          (triton on CUDA, a C++ compiler
                            ``torch.compile``                     on the CPU)
masked_softmax_fusion       apex ``scaled_masked_softmax_cuda``   the backend's record says it runs
                                                                  megatron's softmax (``local``)
                                                                  and apex's kernel imports
apply_rope_fusion           transformer-engine's fused RoPE       transformer-engine imports
gradient_accumulation_      TE's linear layers (``te``) or apex   the layers' kernel imports
fusion                      ``fused_weight_gradient_mlp_cuda``
                            (``torch``/``local``: megatron's
                            ColumnParallelLinear)
persist_layer_norm          apex's persistent *LayerNorm*         never: MIO uses RMSNorm, and
                                                                  megatron's torch norm asserts it
                                                                  off
==========================  ====================================  =================================

Every fusion can be refused with Megatron-LM's ``--no-*-fusion`` flags (``FUSION_FLAGS``); the
tiny CPU configurations do so for the two ``torch.compile`` fusions only because compiling costs
more than a tiny model's whole run.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
from dataclasses import dataclass

# Megatron-LM's flag (without the leading "--no-") -> the Fusions field it refuses.
FUSION_FLAGS = {
    "bias-swiglu-fusion": "bias_activation_fusion",
    "bias-dropout-fusion": "bias_dropout_fusion",
    "masked-softmax-fusion": "masked_softmax_fusion",
    "rope-fusion": "apply_rope_fusion",
    "gradient-accumulation-fusion": "gradient_accumulation_fusion",
}


@dataclass(frozen=True)
class Fusions:
    """The fusion fields of megatron-core's TransformerConfig, all off by default."""

    bias_activation_fusion: bool = False
    bias_dropout_fusion: bool = False
    masked_softmax_fusion: bool = False
    apply_rope_fusion: bool = False
    gradient_accumulation_fusion: bool = False

    def config_fields(self) -> dict:
        """Keyword arguments for TransformerConfig (``persist_layer_norm`` is always off)."""
        return {**dataclasses.asdict(self), "persist_layer_norm": False}

    def describe(self) -> str:
        """One line for the start-up log: the fusions that are on."""
        on = [name for name, value in dataclasses.asdict(self).items() if value]
        return ", ".join(on) if on else "none"


NO_FUSIONS = Fusions()


def _module_imports(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


@functools.cache
def compile_backend_available(device_type: str) -> bool:
    """Whether ``torch.compile`` (megatron's ``jit_fuser``) can generate code for the device."""
    from megatron.core import jit

    import torch

    if jit.jit_fuser is not torch.compile:
        return False
    if device_type == "cuda":
        from torch.utils._triton import has_triton

        return bool(has_triton())
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        return bool(get_cpp_compiler())
    except Exception:  # no usable C++ compiler: inductor cannot build CPU kernels
        return False


@functools.cache
def _te_fused_rope_available() -> bool:
    from megatron.core.models.common.embeddings.rope_utils import fused_apply_rotary_pos_emb

    return fused_apply_rotary_pos_emb is not None


def _apex_grad_accumulation_available() -> bool:
    from megatron.core.tensor_parallel import layers

    return bool(layers._grad_accum_fusion_available)


def available_fusions(attention_backend: str, device_type: str) -> Fusions:
    """Every fusion whose kernel this process can run for this backend and device."""
    from megatron_mio.model.attention import get_backend, te_available

    backend = get_backend(attention_backend)
    compiled = compile_backend_available(device_type)
    te = te_available()
    return Fusions(
        bias_activation_fusion=compiled,
        bias_dropout_fusion=compiled,
        masked_softmax_fusion=backend.uses_megatron_softmax and _module_imports("scaled_masked_softmax_cuda"),
        apply_rope_fusion=te and _te_fused_rope_available(),
        gradient_accumulation_fusion=(te if backend.te_linear_layers else _apex_grad_accumulation_available()),
    )


def plan_fusions(attention_backend: str, device_type: str, refused: tuple[str, ...] = ()) -> Fusions:
    """The fusions the trainer uses: what is available, less what the flags refuse."""
    unknown = set(refused) - set(FUSION_FLAGS.values())
    if unknown:
        raise ValueError(f"unknown fusions {sorted(unknown)}; known: {sorted(FUSION_FLAGS.values())}")
    return dataclasses.replace(available_fusions(attention_backend, device_type), **{name: False for name in refused})
