"""The trainer's loss is exactly the model's: its first loss equals ``transformers``' loss on the
same documents, one document at a time, at TP=1, TP=2 and PP=2.

The vocabulary (1,000 ids) is padded to 1,024 output columns; without masking the padding
columns (``megatron_mio/model/vocab_padding.py``) the first loss is higher by about 2e-2, four
orders of magnitude above the tolerance (the test checks that too).  The documents are the mock
packs of the first global batch, regenerated here from ``(seed, sample index)``.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from megatron_mio.convert import convert_from_hf
from megatron_mio.tokenizer.vocab import Modality
from megatron_mio.training.mock_data import mock_modality_table, mock_pack
from tests.test_convert import ROPE_BASE, save_random_llama, tiny_llama_config
from tests.trainer_runs import train

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]

VOCAB = 1000  # padded to 1024 columns at TP=1 and TP=2
SEQ, GLOBAL_BATCH, SEED = 64, 4, 1234
RTOL = 2e-6
FIRST_STEP = [
    "--use-cpu", "--mock-data", "--model-preset", "tiny", "--num-layers", "4", "--vocab-size", str(VOCAB),
    "--rotary-base", str(ROPE_BASE), "--seq-length", str(SEQ), "--micro-batch-size", "1",
    "--global-batch-size", str(GLOBAL_BATCH), "--seed", str(SEED), "--train-iters", "1", "--lr", "1e-3",
    "--finetune",
]
LAYOUTS = {"tp1": (1, []), "tp2": (2, ["--tensor-model-parallel-size", "2"]),
           "pp2": (2, ["--pipeline-model-parallel-size", "2"])}
KINDS = {"loss_text": Modality.TEXT, "loss_image": Modality.IMAGE, "loss_speech": Modality.SPEECH}


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("exact_loss")
    hf = save_random_llama(root / "hf", tiny_llama_config(VOCAB))
    convert_from_hf(str(hf), str(root / "mg"), progress=False)
    return {"root": root, "hf": hf, "mg": root / "mg"}


def documents():
    """(tokens, targets, modality of each target) of every document in the first global batch."""
    table = torch.from_numpy(mock_modality_table(VOCAB))
    for index in range(GLOBAL_BATCH):
        pack = mock_pack(SEED, index, SEQ, VOCAB)
        bounds = [int(b) for b in pack["cu_seqlens"] if b >= 0]
        for start, end in zip(bounds[:-1], bounds[1:]):
            tokens = pack["tokens"][start:end]
            assert torch.all(pack["loss_mask"][start:end - 1] == 1) and pack["loss_mask"][end - 1] == 0
            yield tokens, tokens[1:], table[tokens[1:]]


@pytest.fixture(scope="module")
def reference(converted):
    """Per-token loss (overall and per modality) from ``transformers``, one document at a time;
    and the same with zero logits appended for the padding columns (what the trainer computed
    before the padding was masked)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(converted["hf"], dtype=torch.float32).eval()
    sums = {key: torch.zeros(2, dtype=torch.float64) for key in ["loss", "padded", *KINDS]}
    with torch.no_grad():
        for tokens, targets, kinds in documents():
            logits = model(tokens.unsqueeze(0)).logits[0, :-1].double()
            losses = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
            padded = torch.cat([logits, logits.new_zeros(len(targets), 1024 - VOCAB)], dim=-1)
            sums["loss"] += torch.tensor([losses.sum(), len(targets)])
            sums["padded"] += torch.tensor([torch.nn.functional.cross_entropy(padded, targets, reduction="sum"),
                                            len(targets)])
            for key, kind in KINDS.items():
                chosen = kinds == kind
                sums[key] += torch.tensor([losses[chosen].sum(), chosen.sum()])
    assert all(sums[key][1] > 0 for key in KINDS)  # every modality has labelled tokens
    return {key: float(total / count) for key, (total, count) in sums.items()}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_first_loss_equals_transformers_per_document(converted, reference, layout):
    nproc, flags = LAYOUTS[layout]
    run = train(Path(converted["root"]), layout, nproc, ["--load", str(converted["mg"]), *flags], base=FIRST_STEP)
    record = run["records"][0]
    assert record["iteration"] == 1
    # The masking matters at this tolerance: padding columns at logit 0 would move the loss ~1e4 x RTOL.
    assert not math.isclose(reference["padded"], reference["loss"], rel_tol=1000 * RTOL)
    for key in ["loss", *KINDS]:
        assert math.isclose(record[key], reference[key], rel_tol=RTOL), (key, record[key], reference[key])
