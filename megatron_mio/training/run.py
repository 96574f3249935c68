"""What a run is, decided once before anything is built: :class:`RunDescription`.

The command line (``arguments.parse_args``) says what the user asked for; this adds what follows
from the tokenizer and the checkpoint (the vocabulary and its padding) and gathers the sizes every
component needs.  It is frozen: components read the fields they need, nobody writes back.
"""

from __future__ import annotations

from dataclasses import dataclass

from megatron_mio.model.presets import ModelPreset
from megatron_mio.training.arguments import model_preset
from megatron_mio.training.checkpointing import ResumePoint, padded_vocab_for_load


@dataclass(frozen=True)
class RunDescription:
    preset: ModelPreset
    vocab_size: int  # the tokenizer's (or --vocab-size): the loss and the logits cover these ids
    padded_vocab_size: int  # rows of the embedding and output layer (the checkpoint's on a resume)
    tensor_parallel_size: int
    pipeline_parallel_size: int
    virtual_pipeline_parallel_size: int | None
    data_parallel_size: int
    micro_batch_size: int
    global_batch_size: int
    num_microbatches: int  # per iteration and data-parallel rank
    seq_length: int
    precision: str  # "bf16", "fp16" or "fp32"

    @property
    def num_model_chunks(self) -> int:
        return self.virtual_pipeline_parallel_size or 1


def describe_run(args, vocab_size: int, resume: ResumePoint | None) -> RunDescription:
    return RunDescription(
        preset=model_preset(args),
        vocab_size=vocab_size,
        padded_vocab_size=padded_vocab_for_load(
            vocab_size, args.make_vocab_size_divisible_by, args.tensor_model_parallel_size,
            resume.layout if resume else None,
        ),
        tensor_parallel_size=args.tensor_model_parallel_size,
        pipeline_parallel_size=args.pipeline_model_parallel_size,
        virtual_pipeline_parallel_size=args.virtual_pipeline_model_parallel_size,
        data_parallel_size=args.data_parallel_size,
        micro_batch_size=args.micro_batch_size,
        global_batch_size=args.global_batch_size,
        num_microbatches=args.num_microbatches,
        seq_length=args.seq_length,
        precision="bf16" if args.bf16 else "fp16" if args.fp16 else "fp32",
    )
