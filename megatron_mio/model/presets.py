"""Model shapes: the one place that knows Yi-6B's architecture and the small test models."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

# The vocabulary is padded to a multiple of this times TP (Megatron-LM's
# ``--make-vocab-size-divisible-by`` default): MIO's 76,292 ids become 76,416 at TP1.
VOCAB_SIZE_DIVISIBLE_BY = 128


@dataclass(frozen=True)
class ModelPreset:
    """A Llama-architecture decoder: RMSNorm, SwiGLU, RoPE, GQA, no biases, untied embeddings."""

    num_layers: int
    hidden_size: int
    ffn_hidden_size: int
    num_attention_heads: int
    num_query_groups: int
    norm_epsilon: float = 1e-5
    rotary_base: float = 5_000_000.0
    max_position_embeddings: int = 4096
    init_method_std: float = 0.02

    @property
    def head_dim(self) -> int:
        """Channels per attention head (megatron-core's ``kv_channels``, HF's ``head_dim``).

        Derived, not stored: checkpoints and descriptions hold ``asdict(preset)``, and a Llama
        config whose ``head_dim`` is not ``hidden_size / heads`` is refused on import."""
        return self.hidden_size // self.num_attention_heads

    def with_overrides(self, **overrides) -> "ModelPreset":
        """Return a copy with every non-None override applied (flags override presets)."""
        known = {f.name for f in fields(self)}
        unknown = set(overrides) - known
        if unknown:
            raise ValueError(f"unknown model fields {sorted(unknown)}; known: {sorted(known)}")
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


PRESETS: dict[str, ModelPreset] = {
    # Yi-6B-Base, the backbone MIO starts from (its config.json on the Hugging Face hub).
    "yi-6b": ModelPreset(
        num_layers=32,
        hidden_size=4096,
        ffn_hidden_size=11008,
        num_attention_heads=32,
        num_query_groups=4,
        norm_epsilon=1e-5,
        rotary_base=5_000_000.0,
        max_position_embeddings=4096,
    ),
    # Tiny shapes for tests and the laptop quickstart; GQA kept (4 heads, 2 groups).
    "tiny": ModelPreset(
        num_layers=2, hidden_size=64, ffn_hidden_size=176, num_attention_heads=4,
        num_query_groups=2, max_position_embeddings=4096,
    ),
    "small": ModelPreset(
        num_layers=4, hidden_size=256, ffn_hidden_size=688, num_attention_heads=8,
        num_query_groups=2, max_position_embeddings=4096,
    ),
}


def get_preset(name: str) -> ModelPreset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown model preset {name!r}; choose from {sorted(PRESETS)}") from None


def padded_vocab_size(vocab_size: int, divisible_by: int = VOCAB_SIZE_DIVISIBLE_BY,
                      tensor_parallel_size: int = 1) -> int:
    """Round the vocabulary up so every tensor-parallel shard has the same, aligned size."""
    multiple = divisible_by * tensor_parallel_size
    return -(-vocab_size // multiple) * multiple
