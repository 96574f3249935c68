"""SpeechTokenizer as MIO uses it: 16 kHz audio <-> content + three timbre code lists.

SpeechTokenizer (PyPI ``speechtokenizer`` 1.0.x) quantizes speech with 8 residual layers of
1,024 codes at 50 frames per second; MIO keeps the first four: layer 1 is the content codebook,
layers 2-4 the timbre codebooks (``<spch{1024 k + c}>`` in our tokenizer).  A model directory
holds ``config.json`` and ``SpeechTokenizer.pt`` (the published layout; MIO's model directories
keep them under ``SpeechTokenizer/``).

The package's ``__init__`` also imports its trainer (torchaudio, accelerate, lion-pytorch) and
its metadata requires torchaudio, which pins its own torch: we install it without dependencies
and import its model module without running that ``__init__`` (``_speechtokenizer_class``).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import sys
import types
from pathlib import Path

import numpy as np

from megatron_mio.atomic import atomic_file, write_text
from megatron_mio.codec.audio import SAMPLE_RATE, optional_import
from megatron_mio.tokenizer import vocab as V

CONFIG_FILE = "config.json"
CHECKPOINT_FILE = "SpeechTokenizer.pt"
MIO_SUBDIRECTORY = "SpeechTokenizer"

# The published base model's configuration (speechtokenizer_hubert_avg/config.json), the keys
# SpeechTokenizer.__init__ reads: 320x downsampling (50 frames/s at 16 kHz), 8 layers x 1,024.
BASE_CONFIG = {
    "n_filters": 64, "strides": [8, 5, 4, 2], "dimension": 1024, "semantic_dimension": 768,
    "bidirectional": True, "dilation_base": 2, "residual_kernel_size": 3,
    "n_residual_layers": 1, "lstm_layers": 2, "activation": "ELU", "codebook_size": 1024,
    "n_q": 8, "sample_rate": SAMPLE_RATE,
}


class CodecError(ValueError):
    """A codec directory, configuration or code list that cannot be used (one line)."""


@dataclasses.dataclass(frozen=True)
class SpeechCodes:
    """One utterance: ``content`` [frames] and ``timbre`` [3, frames], codes in 0..1023."""

    content: np.ndarray
    timbre: np.ndarray

    def to_json(self) -> dict:
        """Our JSONL schema's ``speech`` object."""
        return {"content": self.content.tolist(), "timbre": self.timbre.tolist()}


def frames_for(samples: int, downsample: int) -> int:
    """Frames SpeechTokenizer's encoder gives for ``samples`` (its convolutions pad the tail)."""
    return math.ceil(samples / downsample)


def _speechtokenizer_class():
    """``speechtokenizer.model.SpeechTokenizer`` without importing the package's trainer."""
    loaded = sys.modules.get("speechtokenizer")
    if loaded is None:
        spec = importlib.util.find_spec("speechtokenizer")
        if spec is None or not spec.submodule_search_locations:
            optional_import("speechtokenizer")  # raises the one-line install hint
        # A package object whose __init__ never ran: its submodules import normally.
        package = types.ModuleType("speechtokenizer")
        package.__path__ = list(spec.submodule_search_locations)
        package.__spec__ = spec
        package.__file__ = spec.origin
        sys.modules["speechtokenizer"] = package
    optional_import("einops")
    from speechtokenizer.model import SpeechTokenizer

    return SpeechTokenizer


def check_config(config: dict, where: str) -> None:
    """The parts of a SpeechTokenizer configuration that MIO's layout depends on."""
    missing = sorted(set(BASE_CONFIG) - set(config))
    if missing:
        raise CodecError(f"{where}: missing {', '.join(missing)} (a SpeechTokenizer config.json "
                         f"has them)")
    expected = {"sample_rate": SAMPLE_RATE, "codebook_size": V.SPEECH_CODEBOOK_SIZE}
    for key, value in expected.items():
        if config[key] != value:
            raise CodecError(f"{where}: {key} is {config[key]}, MIO's speech tokens need {value}")
    if config["n_q"] < V.SPEECH_CODEBOOKS:
        raise CodecError(f"{where}: n_q is {config['n_q']}, MIO keeps {V.SPEECH_CODEBOOKS} layers")


def resolve_directory(path: str | os.PathLike) -> Path:
    """A SpeechTokenizer directory, or a MIO model directory holding one in ``SpeechTokenizer/``."""
    path = Path(path)
    for candidate in (path, path / MIO_SUBDIRECTORY):
        if (candidate / CONFIG_FILE).is_file() and (candidate / CHECKPOINT_FILE).is_file():
            return candidate
    raise CodecError(f"{path}: no {CONFIG_FILE} + {CHECKPOINT_FILE} here or in "
                     f"{MIO_SUBDIRECTORY}/ (a SpeechTokenizer model directory)")


class SpeechCodec:
    """A SpeechTokenizer on one device, encoding and decoding MIO's four code lists."""

    def __init__(self, model, config: dict, device: str = "cpu"):
        self.model = model.to(device).eval()
        self.config = dict(config)  # the PyPI class does not keep it; save() needs it
        self.device = device
        self.downsample = int(np.prod(config["strides"]))

    @classmethod
    def from_config(cls, config: dict, device: str = "cpu") -> SpeechCodec:
        """Randomly initialised weights (tests, benchmarks); real use loads a checkpoint."""
        check_config(config, "config")
        return cls(_speechtokenizer_class()(config), config, device)

    @classmethod
    def from_directory(cls, path: str | os.PathLike, device: str = "cpu") -> SpeechCodec:
        import torch

        directory = resolve_directory(path)
        try:
            config = json.loads((directory / CONFIG_FILE).read_text())
        except json.JSONDecodeError as error:
            raise CodecError(f"{directory / CONFIG_FILE}: not JSON ({error})") from None
        check_config(config, str(directory / CONFIG_FILE))
        model = _speechtokenizer_class()(config)
        try:
            state = torch.load(directory / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
        except (RuntimeError, EOFError, OSError) as error:  # truncated, not a torch file
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise CodecError(f"{directory / CHECKPOINT_FILE}: not a readable checkpoint "
                             f"({reason})") from None
        try:
            model.load_state_dict(state)
        except RuntimeError as error:
            first = str(error).splitlines()[1:2] or [str(error)]
            raise CodecError(f"{directory / CHECKPOINT_FILE}: does not match {CONFIG_FILE} "
                             f"({first[0].strip()})") from None
        return cls(model, config, device)

    def save(self, path: str | os.PathLike) -> Path:
        """``config.json`` + ``SpeechTokenizer.pt``, the layout ``from_directory`` reads."""
        import torch

        directory = Path(path)
        with atomic_file(directory / CHECKPOINT_FILE) as tmp:
            torch.save(self.model.state_dict(), tmp)
        write_text(directory / CONFIG_FILE, json.dumps(self.config, indent=2) + "\n")
        return directory

    def initialize_codebooks(self, waveform: np.ndarray, seed: int) -> None:
        """Fill an untrained model's codebooks from the encoder's frames of ``waveform`` (tests,
        benchmarks).  SpeechTokenizer's codebooks are zero until k-means initialises them from
        the first training batch, so a fresh model maps every frame to code 0; this is that
        initialisation with the package's own sampling and no k-means iterations (which would
        hold frames x 1,024 x 1,024 distances), layer by layer on the residual, plus noise."""
        import torch
        from speechtokenizer.quantization.core_vq import sample_vectors

        torch.manual_seed(seed)
        with torch.inference_mode():
            residual = self.model.encoder(torch.from_numpy(waveform)[None, None].to(self.device))
        residual = residual.clone()  # [1, dimension, frames], usable outside inference mode
        for layer in self.model.quantizer.vq.layers:
            book = layer._codebook
            with torch.no_grad():
                frames = residual[0].t()
                # Noise keeps each layer's residual from vanishing on the calibration frames,
                # which would leave the next layer's codebook all zeros.
                entries = sample_vectors(frames, book.codebook_size)
                book.embed.copy_(entries + 0.5 * frames.std(dim=0) * torch.randn_like(entries))
                book.embed_avg.copy_(book.embed)
                book.inited.fill_(1)
                residual = residual - layer.decode(layer.encode(residual))

    def encode(self, waveforms: list[np.ndarray]) -> list[SpeechCodes]:
        """16 kHz mono waveforms -> their codes, in one padded batch.  The encoder's
        bidirectional LSTM sees the zero padding, so a waveform's last codes can differ from
        encoding it alone; callers batch waveforms of similar length."""
        import torch

        if not waveforms or any(w.ndim != 1 or w.size == 0 for w in waveforms):
            raise CodecError("encode needs non-empty 1-D waveforms")
        longest = max(w.size for w in waveforms)
        batch = np.zeros((len(waveforms), 1, longest), dtype=np.float32)
        for row, waveform in enumerate(waveforms):
            batch[row, 0, : waveform.size] = waveform
        with torch.inference_mode():
            codes = self.model.encode(torch.from_numpy(batch).to(self.device),
                                      n_q=V.SPEECH_CODEBOOKS)
        codes = codes.cpu().numpy().astype(np.int64)  # [4, batch, frames]
        result = []
        for row, waveform in enumerate(waveforms):
            frames = codes[:, row, : frames_for(waveform.size, self.downsample)]
            result.append(SpeechCodes(content=frames[0], timbre=frames[1:]))
        return result

    def decode(self, content, timbre=None) -> np.ndarray:
        """Codes -> a 16 kHz float32 waveform of ``frames * 320`` samples.  Without timbre
        (MIO's input layout) the content layer alone is decoded, as SpeechTokenizer allows."""
        import torch

        layers = [np.asarray(content, dtype=np.int64)]
        if timbre is not None:
            layers += [np.asarray(row, dtype=np.int64) for row in timbre]
        _check_codes(layers)
        codes = torch.from_numpy(np.stack(layers)[:, None, :]).to(self.device)
        with torch.inference_mode():
            waveform = self.model.decode(codes, st=0)
        return waveform[0, 0].float().cpu().numpy()

    def describe(self) -> str:
        parameters = sum(p.numel() for p in self.model.parameters())
        return (f"SpeechTokenizer, {parameters / 1e6:.1f} M parameters, {self.config['n_q']} "
                f"layers kept {V.SPEECH_CODEBOOKS}, {SAMPLE_RATE // self.downsample} frames/s, "
                f"{self.device}")


def _check_codes(layers: list[np.ndarray]) -> None:
    if len(layers) not in (1, V.SPEECH_CODEBOOKS):
        raise CodecError(f"speech needs content codes and optionally {V.SPEECH_TIMBRE_CODEBOOKS} "
                         f"timbre lists, got {len(layers) - 1} timbre lists")
    for k, layer in enumerate(layers):
        what = "content" if k == 0 else f"timbre[{k - 1}]"
        if layer.ndim != 1 or layer.size == 0:
            raise CodecError(f"speech {what}: expected a non-empty flat list of codes")
        if layer.size != layers[0].size:
            raise CodecError(f"speech {what}: {layer.size} codes but content has "
                             f"{layers[0].size}")
        if layer.min() < 0 or layer.max() >= V.SPEECH_CODEBOOK_SIZE:
            raise CodecError(f"speech {what}: codes must be in 0..{V.SPEECH_CODEBOOK_SIZE - 1}")
