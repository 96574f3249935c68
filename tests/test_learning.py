"""End to end, through the user's own commands: a tiny model fine-tuned on SFT chats learns a small
text <-> image and text <-> speech mapping, both directions, and answers through generate.py.

Twelve concepts, each a word with its own 32 image codes and its own short four-codebook speech
sample.  48 chats (draw / name the image / say / transcribe, per concept) go through
``tools/preprocess_data.py --stage sft`` -> ``python -m megatron_mio.pretrain`` on the CPU ->
``tools/convert_to_hf.py`` -> ``tools/generate.py``.  The model can only answer right if every
link holds: the ChatML template and its loss mask (only assistant turns), the speech layouts
(content only as input, four parts as output), packing with per-document masks and labels,
the export's vocabulary rows, and the prompt that generate.py renders.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest

from megatron_mio.commands.generate import main as generate_main
from megatron_mio.tokenizer import vocab as V
from tests.distributed import REPO_ROOT, cpu_env

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]

CONCEPTS = ("cat", "dog", "tree", "house", "river", "apple", "car", "bird", "moon", "boat",
            "flower", "bread")
SPEECH_FRAMES = 6  # codes per codebook: four codebooks of six frames each


def concept_codes(seed: int = 7) -> dict[str, dict]:
    """Each concept's image (32 codes) and speech (content + three timbre lists), all ids distinct
    within a sample, so the speech preset's repetition penalty never hits a needed token."""
    rng = random.Random(seed)
    images = rng.sample(range(V.IMAGE_CODEBOOK_SIZE), V.IMAGE_CODES_PER_IMAGE * len(CONCEPTS))
    contents = rng.sample(range(1024), SPEECH_FRAMES * len(CONCEPTS))
    codes = {}
    for i, word in enumerate(CONCEPTS):
        frames = slice(i * SPEECH_FRAMES, (i + 1) * SPEECH_FRAMES)
        codes[word] = {
            "image": images[i * V.IMAGE_CODES_PER_IMAGE:(i + 1) * V.IMAGE_CODES_PER_IMAGE],
            "speech": {"content": contents[frames],
                       "timbre": [rng.sample(range(1024), SPEECH_FRAMES) for _ in range(3)]},
        }
    return codes


def chats(codes: dict[str, dict]) -> list[dict]:
    """Four chats per concept, one per direction, user input ordered as generate.py renders it
    (image / speech first, then the text)."""
    out = []
    for word, c in codes.items():
        user_text = lambda text: {"text": text}  # noqa: E731
        out += [
            {"type": "chat", "messages": [
                {"role": "user", "content": f"Draw a {word}."},
                {"role": "assistant", "content": [{"image": c["image"]}]}]},
            {"type": "chat", "messages": [
                {"role": "user", "content": [{"image": c["image"]}, user_text("What is this?")]},
                {"role": "assistant", "content": f"A {word}."}]},
            {"type": "chat", "messages": [
                {"role": "user", "content": f"Say {word}."},
                {"role": "assistant", "content": [{"speech": c["speech"]}]}]},
            {"type": "chat", "messages": [
                {"role": "user", "content": [{"speech": {"content": c["speech"]["content"]}},
                                             user_text("What was said?")]},
                {"role": "assistant", "content": f"A {word}."}]},
        ]
    return out


def tool(name: str, *args, timeout: float = 600) -> subprocess.CompletedProcess:
    """One of the user's commands, as a user runs it."""
    cmd = [sys.executable, str(REPO_ROOT / "tools" / f"{name}.py"), *map(str, args)]
    result = subprocess.run(cmd, cwd=REPO_ROOT, env=cpu_env(), capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, f"{name} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def trained(tmp_path_factory, mio_tokenizer_dir):
    root = tmp_path_factory.mktemp("learning")
    codes = concept_codes()
    corpus = root / "chats.jsonl"
    corpus.write_text("".join(json.dumps(chat) + "\n" for chat in chats(codes)))
    tool("preprocess_data", "--input", corpus, "--output-prefix", root / "sft",
         "--tokenizer", mio_tokenizer_dir, "--stage", "sft", "--seq-length", 256)
    train = subprocess.run([
        sys.executable, "-m", "megatron_mio.pretrain", "--config",
        REPO_ROOT / "examples/configs/tiny_cpu.yaml", "--model-preset", "small", "--num-layers", "2",
        "--tokenizer-model", mio_tokenizer_dir, "--data-path", root / "sft",
        "--seq-length", "256", "--micro-batch-size", "4", "--global-batch-size", "4",
        "--train-iters", "400", "--lr", "2e-3", "--min-lr", "2e-4", "--lr-warmup-iters", "20",
        "--weight-decay", "0", "--log-interval", "50",
        "--save", root / "ckpt", "--save-interval", "400",
    ], cwd=REPO_ROOT, env=cpu_env(), capture_output=True, text=True, timeout=900)
    assert train.returncode == 0, train.stdout[-3000:] + train.stderr[-3000:]
    tool("convert_to_hf", "--load", root / "ckpt", "--output", root / "hf",
         "--tokenizer", mio_tokenizer_dir)
    return {"root": root, "codes": codes, "hf": root / "hf"}


def generate(trained, out_name: str, *args, in_process: bool = False) -> list[dict]:
    """tools/generate.py's answers; ``in_process`` runs the same ``main`` the tool runs, without
    a new interpreter (24 single-prompt calls would spend most of their time importing torch)."""
    output = trained["root"] / f"{out_name}.json"
    argv = ["--hf-dir", trained["hf"], "--output", output, *args]
    if in_process:
        assert generate_main(list(map(str, argv))) == 0
    else:
        tool("generate", *argv)
    results = json.loads(output.read_text())
    return results if isinstance(results, list) else [results]


def test_text_to_image_and_speech(trained):
    codes = trained["codes"]
    prompts = [a for word in CONCEPTS for a in ("--prompt", f"Draw a {word}.")]
    images = generate(trained, "draw", *prompts, "--modality", "image")
    drawn = [r["images"][0]["codes"] if r["images"] else None for r in images]
    right = sum(d == codes[w]["image"] for w, d in zip(CONCEPTS, drawn))
    assert right >= 10, f"{right}/12 images exact"  # chance: 1 in 12

    prompts = [a for word in CONCEPTS for a in ("--prompt", f"Say {word}.")]
    spoken = generate(trained, "say", *prompts, "--modality", "speech")
    said = [{"content": r["speech"][0]["content"], "timbre": r["speech"][0]["timbre"]} if r["speech"] else None
            for r in spoken]
    right = sum(s == codes[w]["speech"] for w, s in zip(CONCEPTS, said))
    assert right >= 10, f"{right}/12 speech samples exact: {spoken[0]['speech']}"


def test_image_and_speech_to_text(trained):
    codes = trained["codes"]
    named, heard = 0, 0
    for word in CONCEPTS:
        image = ",".join(map(str, codes[word]["image"]))
        answer = generate(trained, f"name_{word}", "--prompt", "What is this?", "--image-codes", image,
                          in_process=True)
        named += word in answer[0]["text"]
        speech = ",".join(map(str, codes[word]["speech"]["content"]))
        answer = generate(trained, f"hear_{word}", "--prompt", "What was said?", "--speech-codes", speech,
                          in_process=True)
        heard += word in answer[0]["text"]
    assert named >= 10 and heard >= 10, f"image -> text {named}/12, speech -> text {heard}/12"
