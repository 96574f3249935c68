"""Logit parity between ``transformers`` and our GPTModel loaded from a torch_dist checkpoint.

``megatron_logits`` runs under torchrun with TP x PP ranks: it builds the GPTModel for this rank's
stage, loads the checkpoint through megatron-core's ``dist_checkpointing.load`` (exactly what the
trainer does), runs the prompts through megatron-core's pipeline schedule (forward only) and
gathers the vocabulary-parallel logits.  ``hf_logits`` runs ``LlamaForCausalLM``.  The prompts mix
text with image and speech tokens, so the extended rows of the vocabulary are exercised too.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from megatron_mio.checkpoint.description import description_from_checkpoint, preset_of
from megatron_mio.checkpoint.layout import resolve_checkpoint
from megatron_mio.convert.megatron_io import CheckpointReader
from megatron_mio.model.presets import padded_vocab_size

DEFAULT_PROMPTS = (
    "<image><img12><img7><img4095></image> The caption of this image is: a cat on a mat",
    "<spch><spch3><spch1000><spch17></spch> Transcribe this speech: hello world",
    "Please generate an image of \"a red bicycle\": <image><img1><img2>",
    "The quick brown fox jumps over the lazy dog.",
)


@dataclass
class ParityReport:
    max_abs_diff: float
    top1_agreement: float
    tokens: int

    def passed(self, tolerance: float, min_top1: float) -> bool:
        return self.max_abs_diff <= tolerance and self.top1_agreement >= min_top1


def encode_prompts(prompts, tokenizer_dir: str | None, vocab: int, seed: int = 0) -> list[list[int]]:
    """Token ids per prompt: through the MIO tokenizer, or random ids when there is none."""
    if tokenizer_dir is None:
        generator = torch.Generator().manual_seed(seed)
        return [torch.randint(0, vocab, (12 + 3 * i,), generator=generator).tolist() for i in range(len(prompts))]
    from megatron_mio.tokenizer import MIOTokenizer

    tokenizer = MIOTokenizer(tokenizer_dir)
    return [tokenizer.encode_mixed(p, add_bos=True) for p in prompts]


def hf_logits(hf_dir: str, prompts: list[list[int]]) -> list[torch.Tensor]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    model.eval()
    with torch.no_grad():
        return [model(torch.tensor([ids])).logits[0].float() for ids in prompts]


def _load_model_chunk(checkpoint_dir, description: dict, tp: int, pp: int, backend: str):
    from megatron.core import dist_checkpointing, parallel_state

    from megatron_mio.model import build_gpt_model, build_transformer_config
    from megatron_mio.model.model_config import FP32, ParallelLayout
    from megatron_mio.model.vocab_padding import mask_vocab_padding

    preset = preset_of(description)
    padded = description.get("padded_vocab_size") or padded_vocab_size(description["vocab_size"], tensor_parallel_size=tp)
    # The trainer's own builder: the model compared is the one training runs (fp32, no fusions).
    config = build_transformer_config(preset, ParallelLayout(tp, pp), FP32)
    model = build_gpt_model(
        config, preset, padded, attention_backend=backend,
        pre_process=parallel_state.is_pipeline_first_stage(),
        post_process=parallel_state.is_pipeline_last_stage(),
    )
    mask_vocab_padding(model, description["vocab_size"])
    loaded = dist_checkpointing.load({"model": model.sharded_state_dict()}, str(checkpoint_dir))
    model.load_state_dict(loaded["model"], strict=True)
    model.eval()
    return model, config


def megatron_logits(load: str, prompts: list[list[int]], *, tp: int, pp: int, backend: str = "local",
                    iteration: int | None = None) -> list[torch.Tensor] | None:
    """Logits ``[s, vocab]`` per prompt on the last pipeline stage (None on other ranks).

    Expects the platform set up and the default process group initialised (TP x PP ranks).
    """
    from megatron.core import parallel_state
    from megatron.core.pipeline_parallel import get_forward_backward_func
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    from megatron_mio.model.inputs import model_inputs

    directory = resolve_checkpoint(load, iteration)
    description = description_from_checkpoint(CheckpointReader(directory).common, None, None, str(directory))
    parallel_state.initialize_model_parallel(tp, pp)
    model_parallel_cuda_manual_seed(0)
    model, config = _load_model_chunk(directory, description, tp, pp, backend)
    vocab = description["vocab_size"]

    def forward_step(data_iterator, model):
        batch = next(data_iterator)
        inputs = model_inputs(batch, backend)
        if not parallel_state.is_pipeline_first_stage():
            inputs["input_ids"] = None
        output = model(**inputs)

        def collect(output_tensor, non_loss_data=False):
            return gather_from_tensor_model_parallel_region(output_tensor)[0, :, :vocab].float()

        return output, collect

    results = []
    for ids in prompts:
        s = len(ids)
        batch = {
            "tokens": torch.tensor([ids]),
            "position_ids": torch.arange(s).unsqueeze(0),
            "cu_seqlens": torch.tensor([[0, s]], dtype=torch.int32),
        }
        with torch.no_grad():
            out = get_forward_backward_func()(
                forward_step_func=forward_step, data_iterator=iter([batch]), model=[model],
                num_microbatches=1, seq_length=s, micro_batch_size=1, forward_only=True,
                collect_non_loss_data=True,
            )
        results.append(out[0] if parallel_state.is_pipeline_last_stage() else None)
    return results if parallel_state.is_pipeline_last_stage() else None


def compare(reference: list[torch.Tensor], ours: list[torch.Tensor]) -> ParityReport:
    diffs, agree, total = [], 0, 0
    for a, b in zip(reference, ours):
        if a.shape != b.shape:
            raise ValueError(f"logit shapes differ: transformers {tuple(a.shape)}, megatron {tuple(b.shape)}")
        diffs.append((a - b).abs().max().item())
        agree += int((a.argmax(-1) == b.argmax(-1)).sum())
        total += a.shape[0]
    return ParityReport(max(diffs), agree / total, total)
