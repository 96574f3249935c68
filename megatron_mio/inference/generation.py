"""Inference with an exported MIO model: ChatML prompts, Table 8 decoding, MIO's grammar while
generating, and the output parsed into text / images / speech.

``Generator`` loads the model and tokenizer once; ``Generator.generate`` takes a batch of
prompts (left-padded into one ``model.generate`` call) and returns one result per prompt and
returned sequence.  With ``grammar=True`` (the default) ``MIOGrammarLogitsProcessor`` runs
after the preset's repetition penalty and before its temperature / top-p, so sampling draws
only from tokens that keep the output well-formed.
"""

from __future__ import annotations

import torch

from megatron_mio.inference.grammar import MIOGrammar, MIOGrammarLogitsProcessor
from megatron_mio.inference.parse import parse_output
from megatron_mio.inference.presets import MODALITIES, decoding_preset
from megatron_mio.inference.prompt import MODES, chat_prompt_ids
from megatron_mio.tokenizer import MIOTokenizer


def output_modality(modality: str | None, mode: str) -> str:
    """The requested output modality: voice mode answers in speech; otherwise text by default."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose from {MODES}")
    if mode == "voice":
        if modality not in (None, "speech"):
            raise ValueError(f"voice mode answers with speech only, not {modality}")
        return "speech"
    modality = modality or "text"
    if modality not in MODALITIES:
        raise ValueError(f"unknown output modality {modality!r}; choose from {MODALITIES}")
    return modality


class Generator:
    """A ``transformers`` causal LM directory (``tools/convert_to_hf.py`` output) ready to generate."""

    def __init__(self, model_dir: str, device: str | None = None, dtype: torch.dtype | None = None):
        from transformers import AutoModelForCausalLM

        self.tokenizer = MIOTokenizer(model_dir)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        kwargs = {} if dtype is None else {"dtype": dtype}
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs).to(self.device).eval()
        self.grammar = MIOGrammar(self.tokenizer)

    def describe(self) -> str:
        """One line: the model class, device, dtype and attention implementation."""
        config = self.model.config
        return (f"{type(self.model).__name__} on {self.device} ({self.model.dtype}), "
                f"attention {config._attn_implementation} (transformers)")

    def generate(self, prompts: list[str] | str, *, modality: str | None = None, mode: str = "std",
                 image_codes=None, speech_codes=None, max_new_tokens: int | None = None,
                 num_return_sequences: int = 1, grammar: bool = True, seed: int = 0) -> list[dict]:
        """One result per prompt and returned sequence (prompt-major), each with the generated
        ids, the parsed text / images / speech and ``valid`` (every span complete)."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        modality = output_modality(modality, mode)
        kwargs = decoding_preset(modality).generate_kwargs()
        if max_new_tokens is not None:
            kwargs["max_new_tokens"] = max_new_tokens
        if num_return_sequences > 1 and not kwargs["do_sample"] and num_return_sequences > kwargs["num_beams"]:
            raise ValueError(f"--num-return-sequences {num_return_sequences} exceeds the {modality} "
                             f"preset's {kwargs['num_beams']} beams")
        kwargs["num_return_sequences"] = num_return_sequences
        tok = self.tokenizer
        encoded = [chat_prompt_ids(tok, p, mode, image_codes, speech_codes) for p in prompts]
        input_ids, attention_mask = _left_pad(encoded, tok.pad_id)
        processors = []
        if grammar:
            processors.append(MIOGrammarLogitsProcessor(self.grammar, input_ids.shape[1],
                                                        kwargs["max_new_tokens"], modality))
        torch.manual_seed(seed)
        with torch.no_grad():
            out = self.model.generate(input_ids.to(self.device), attention_mask=attention_mask.to(self.device),
                                      eos_token_id=[tok.im_end_id, tok.eos_id], pad_token_id=tok.pad_id,
                                      logits_processor=processors, **kwargs)
        generated = out[:, input_ids.shape[1]:].tolist()
        results = []
        for row, ids in enumerate(generated):
            ids = _until_stop(ids, (tok.im_end_id, tok.eos_id))
            index = row // num_return_sequences
            results.append({"prompt": prompts[index], "sequence": row % num_return_sequences,
                            "modality": modality, "mode": mode, "decoding": kwargs, "grammar": grammar,
                            "prompt_tokens": len(encoded[index]), "generated_ids": ids,
                            **parse_output(tok, ids)})
        return results


def generate(model_dir: str, prompts: list[str] | str, **kwargs) -> list[dict]:
    """Load ``model_dir`` and generate (``Generator.generate``'s arguments)."""
    return Generator(model_dir).generate(prompts, **kwargs)


def _left_pad(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left padding: every prompt ends where generation starts."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, s in enumerate(sequences):
        ids[row, width - len(s):] = torch.tensor(s)
        mask[row, width - len(s):] = 1
    return ids, mask


def _until_stop(ids: list[int], stop: tuple[int, ...]) -> list[int]:
    """Ids up to and including the first stop token (the padding of finished rows dropped)."""
    for i, token in enumerate(ids):
        if token in stop:
            return ids[: i + 1]
    return ids
