"""The platform switch: megatron-core on the CPU with TP=2 and PP=2, and nothing patched otherwise."""

import json
import subprocess
import sys

import pytest

from tests.distributed import REPO_ROOT, cpu_env, read_rank_results, run_torchrun

WORKER = "tests/workers/platform_parallel_loss.py"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """TP=1/PP=1 losses and the checkpoint every other layout loads its weights from."""
    root = tmp_path_factory.mktemp("platform")
    (root / "tp1").mkdir()
    run_torchrun(WORKER, 1, ["--save", root / "ckpt", "--out", root / "tp1"])
    return root, read_rank_results(root / "tp1", 1)[0]


@pytest.mark.multiprocess
@pytest.mark.parametrize("layout", [("--tp", "2"), ("--pp", "2")], ids=["tp2", "pp2-1f1b"])
def test_parallel_layout_matches_single_rank(reference, layout):
    root, expected = reference
    out = root / layout[0].strip("-")
    out.mkdir()
    run_torchrun(WORKER, 2, [*layout, "--load", root / "ckpt", "--out", out])
    for rank, result in enumerate(read_rank_results(out, 2)):
        # fp32, same weights, same data: only reduction order differs.
        assert result["loss_before"] == pytest.approx(expected["loss_before"], abs=1e-5), rank
        assert result["loss_after"] == pytest.approx(expected["loss_after"], abs=1e-5), rank
    assert expected["loss_after"] < expected["loss_before"] - 0.1  # the SGD step really moved


def _python(code: str, env_extra: dict) -> subprocess.CompletedProcess:
    env = cpu_env(env_extra)
    return subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
        timeout=120,
    )


def test_nothing_is_patched_without_use_cpu():
    code = """
import json, sys, torch
original_current_device = torch.cuda.current_device
original_type = torch.Tensor.type
import megatron_mio.platform as platform, megatron_mio.model, megatron_mio.training.step
try:
    platform.setup(use_cpu=False)
    setup_error = None
except RuntimeError as exc:
    setup_error = str(exc)
print(json.dumps({
    "cpu_module_imported": "megatron_mio.platform.cpu" in sys.modules,
    "current_device_untouched": torch.cuda.current_device is original_current_device,
    "type_untouched": torch.Tensor.type is original_type,
    "mode_active": torch._C._is_torch_function_mode_enabled(),
    "setup_error": setup_error,
}))
"""
    proc = _python(code, {"MIO_USE_CPU": "0"})
    assert proc.returncode == 0, proc.stderr
    state = json.loads(proc.stdout.strip().splitlines()[-1])
    assert state["cpu_module_imported"] is False
    assert state["current_device_untouched"] and state["type_untouched"]
    assert state["mode_active"] is False
    assert "--use-cpu" in state["setup_error"]  # no GPU here: a clear message, not a crash


def test_cpu_redirection_rewrites_cuda_calls():
    code = """
import json, torch
import megatron_mio.platform as platform
plat = platform.setup(use_cpu=True)
x = torch.zeros(3, device="cuda")
y = torch.ones(2, device=torch.cuda.current_device())
stream = torch.cuda.current_stream()
stream.wait_stream(torch.cuda.Stream())
print(json.dumps({
    "backend": plat.backend,
    "devices": [str(x.device), str(y.device), str(x.cuda().device), str(x.to("cuda:0").device)],
    "type": x.type(),
    "cast": x.type(torch.float64).dtype == torch.float64,
}))
"""
    proc = _python(code, {})
    assert proc.returncode == 0, proc.stderr
    state = json.loads(proc.stdout.strip().splitlines()[-1])
    assert state["backend"] == "gloo"
    assert state["devices"] == ["cpu"] * 4
    assert state["type"] == "torch.cuda.FloatTensor"  # what megatron's optimizers compare with
    assert state["cast"] is True


def test_megatron_needs_the_redirection_on_cpu():
    """Control: without the switch, megatron-core's CUDA literals fail on this machine."""
    code = """
import torch
torch.empty(2, device=torch.cuda.current_device())
"""
    proc = _python(code, {"MIO_USE_CPU": "0"})
    assert proc.returncode != 0


def test_extension_module_is_built():
    import numpy as np

    import megatron_mio._C as C

    assert C.document_offsets(np.array([3, 0, 5])).tolist() == [0, 3, 3, 8]
    with pytest.raises(ValueError, match="negative"):
        C.document_offsets(np.array([1, -1]))


def test_megatron_fallback_warnings_are_shown_once():
    """megatron-core warns from six places that transformer-engine / apex are missing; the CLIs'
    ``quiet_import_warnings`` turns that into one line, and leaves other warnings alone."""
    imports = "import megatron.core.optimizer, megatron.core.models.gpt.gpt_layer_specs; import warnings; warnings.warn('other')"

    def stderr(quiet: bool) -> str:
        head = "from megatron_mio import platform; platform.quiet_import_warnings(); " if quiet else ""
        env = {k: v for k, v in cpu_env().items() if k != "PYTHONWARNINGS"}
        return subprocess.run([sys.executable, "-W", "default", "-c", head + imports], cwd=REPO_ROOT, env=env,
                              check=True, capture_output=True, text=True, timeout=120).stderr

    assert stderr(quiet=False).count("not installed") > 1  # what megatron-core does on its own
    quiet = stderr(quiet=True)
    assert quiet.count("not installed") == 1 and "transformer-engine and apex" in quiet
    assert "UserWarning: other" in quiet
