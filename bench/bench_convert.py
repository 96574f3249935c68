#!/usr/bin/env python
"""Conversion wall time and peak RSS, streaming vs load-everything, for a Yi-6B-shaped model.

    python bench/bench_convert.py --work /tmp/bench_convert --layers 4 --tp 2 --pp 2

Builds a random bf16 HF checkpoint with Yi-6B's shapes (hidden 4096, FFN 11008, 32 heads, 4 KV
heads, vocabulary 64,000; ``--layers`` of them, 32 = the full 12 GB model), then runs each
direction in a fresh subprocess and reports wall time, peak resident memory (VmHWM), the resident
memory right after the imports (interpreter, torch, megatron.core, transformers: paid by any tool)
and the peak above it, as multiples of the largest single tensor (the 64,000 x 4,096 embedding,
524 MB) and of the model.  The baseline reads every tensor of the source into memory first and
converts from there.
"""

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from megatron_mio.convert import layout as L  # noqa: E402
from megatron_mio.convert.hf_config import llama_config  # noqa: E402
from megatron_mio.model.presets import get_preset  # noqa: E402
from megatron_mio.tokenizer.vocab import YI_BASE_VOCAB_SIZE  # noqa: E402

YI = get_preset("yi-6b")


def build_hf(directory: Path, layers: int) -> None:
    """Random bf16 safetensors in Yi-6B's shapes, one shard per layer (the parent stays small)."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True)
    preset = YI.with_overrides(num_layers=layers)
    llama_config(preset, YI_BASE_VOCAB_SIZE, torch.bfloat16, {}).save_pretrained(directory)
    shards: dict[str, list] = {}
    for name, shape, dtype in L.hf_tensor_specs(preset, YI_BASE_VOCAB_SIZE, torch.bfloat16):
        layer = name.split(".")[2] if name.startswith("model.layers.") else name
        shards.setdefault(layer, []).append((name, shape, dtype))
    weight_map = {}
    for number, specs in enumerate(shards.values()):
        file = f"model-{number:05d}.safetensors"
        save_file({n: torch.randn(*shape, dtype=dtype) for n, shape, dtype in specs}, directory / file,
                  metadata={"format": "pt"})
        weight_map.update({n: file for n, _, _ in specs})
    (directory / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))


def child(mode: str, src: str, dst: str, tp: int, pp: int) -> None:
    from megatron_mio.convert import convert_from_hf, convert_to_hf
    from megatron_mio.convert import hf_io, megatron_io
    from transformers import GenerationConfig, LlamaConfig  # noqa: F401  (the export imports them)

    baseline = proc_status("VmRSS")  # interpreter + torch + megatron.core + transformers
    if mode.endswith("baseline"):
        install_load_everything(hf_io, megatron_io)
    if mode.startswith("from_hf"):
        convert_from_hf(src, dst, tp=tp, pp=pp, progress=False)
    else:
        convert_to_hf(src, dst, progress=False)
    print(json.dumps({"peak_rss_bytes": proc_status("VmHWM"), "import_rss_bytes": baseline}))


def proc_status(field: str) -> int:
    """A memory field of /proc/self/status in bytes.  VmHWM is the peak of this process image
    (ru_maxrss would not do: Linux carries the parent's peak into a child across fork + exec,
    and the parent has just built the model)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def install_load_everything(hf_io, megatron_io) -> None:
    """Baseline: every source tensor is read into memory before any is converted or written."""
    read_rows = hf_io.HFCheckpointReader.get_rows

    class EagerHF(hf_io.HFCheckpointReader):
        def __init__(self, d):
            super().__init__(d)
            self.cache = {n: read_rows(self, n, 0, None) for n in self.weight_map}

        def get_rows(self, name, start, stop):
            return self.cache[name][start:stop]

    import megatron_mio.convert.from_hf as from_hf
    import megatron_mio.convert.to_hf as to_hf

    from_hf.HFCheckpointReader = EagerHF
    read_slices = megatron_io.CheckpointReader.read_slices

    class EagerMegatron(megatron_io.CheckpointReader):
        def __init__(self, d):
            super().__init__(d)
            self.cache = read_slices(self, {k: ((0,) * len(md.size), tuple(md.size)) for k, md in self._tensors.items()})

        def read_slices(self, slices):
            return {k: self.cache[k][tuple(slice(o, o + n) for o, n in zip(offset, shape))]
                    for k, (offset, shape) in slices.items()}

    to_hf.CheckpointReader = EagerMegatron


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _, _, mode, src, dst, tp, pp = sys.argv
        return child(mode, src, dst, int(tp), int(pp))
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--work", default="/tmp/bench_convert")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--tp", type=int, default=2)
    p.add_argument("--pp", type=int, default=2)
    p.add_argument("--keep", action="store_true", help="keep the checkpoints under --work")
    p.add_argument("--no-baseline", action="store_true",
                   help="skip the load-everything runs (they need the model's size in memory)")
    args = p.parse_args()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    build_hf(work / "hf", args.layers)
    largest = YI_BASE_VOCAB_SIZE * YI.hidden_size * 2
    total = sum(f.stat().st_size for f in (work / "hf").glob("*.safetensors"))
    print(f"model: {args.layers} Yi-6B layers, {total / 1e9:.2f} GB bf16; largest tensor {largest / 1e6:.0f} MB")
    table = []
    for mode, src, dst in (("from_hf", "hf", "mg"), ("from_hf_baseline", "hf", "mg_base"),
                           ("to_hf", "mg", "hf_out"), ("to_hf_baseline", "mg", "hf_base")):
        if args.no_baseline and mode.endswith("baseline"):
            continue
        start = time.time()
        out = subprocess.run([sys.executable, __file__, "--child", mode, str(work / src), str(work / dst),
                              str(args.tp), str(args.pp)], capture_output=True, text=True)
        if out.returncode:
            sys.exit(f"{mode} failed:\n{out.stderr[-3000:]}")
        wall = time.time() - start
        result = json.loads(out.stdout.strip().splitlines()[-1])
        peak, imports = result["peak_rss_bytes"], result["import_rss_bytes"]
        above = peak - imports
        table.append(f"| {mode} | {wall:.1f} s | {peak / 1e9:.2f} GB | {imports / 1e9:.2f} GB | {above / 1e9:.2f} GB "
                     f"| {above / largest:.2f} | {above / total:.3f} |")
        print(f"{mode:18s} {wall:7.1f} s   peak RSS {peak / 1e9:5.2f} GB, after imports {imports / 1e9:4.2f} GB, "
              f"above imports {above / 1e9:5.2f} GB = {above / largest:4.2f} x largest tensor "
              f"= {above / total:5.3f} x model", flush=True)
        if dst != "mg" and not args.keep:
            shutil.rmtree(work / dst)  # only the Megatron checkpoint is read again: spare the disk
    print("\n| mode | wall | peak RSS | RSS after imports | peak above imports | x largest tensor | x model |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    print("\n".join(table))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
