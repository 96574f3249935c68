"""Document-masked attention: every backend keeps the documents of a pack apart, exactly.

Tiny fp32 GPTModels on the CPU platform (one process, world of one) for the single-rank checks;
a real 2-rank torchrun run for tensor parallelism.  ``te`` is checked only where
transformer-engine imports (never on the CPU machines; the list of backends says which ran).
"""

from __future__ import annotations

import pytest
import torch
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.packed_seq_params import PackedSeqParams
from megatron.core.transformer.enums import AttnMaskType

from tests.distributed import REPO_ROOT, run_torchrun

TOL = 1e-5
DOCS = [7, 13, 5, 9]
PAD = 6


@pytest.fixture(scope="module")
def megatron_world():
    """CPU platform, a process group of one, megatron's parallel state at TP=PP=1."""
    from megatron_mio import platform

    platform.init_distributed(platform.setup(use_cpu=True))
    from megatron.core import parallel_state

    parallel_state.initialize_model_parallel(1, 1)
    yield
    parallel_state.destroy_model_parallel()
    torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def models(megatron_world):
    """One model per available backend, all with the same weights."""
    from megatron_mio.model.attention import available_backends
    from tests.attention_models import build_tiny_model

    built = {backend: build_tiny_model(backend) for backend in available_backends()}
    reference = built["local"].state_dict()
    for model in built.values():
        model.load_state_dict(reference)
    return built


def _pack(**kwargs):
    from tests.attention_models import make_pack

    return make_pack(DOCS, PAD, **kwargs)


def _doc_slices(docs):
    start = 0
    for doc in docs:
        yield doc, slice(start, start + doc.numel())
        start += doc.numel()


def test_torch_backend_is_the_default_without_transformer_engine():
    from megatron_mio.model.attention import BACKENDS, default_backend, te_available

    assert set(BACKENDS) == {"te", "torch", "local"}
    assert default_backend() == ("te" if te_available() else "torch")


@torch.no_grad()
def test_each_document_in_a_pack_equals_the_document_alone(models):
    from tests.attention_models import alone_logits, logits

    tokens, positions, cu, docs = _pack()
    for backend, model in models.items():
        packed = logits(model, tokens, positions, cu, backend)[0]
        for doc, where in _doc_slices(docs):
            alone = alone_logits(model, doc, backend)
            torch.testing.assert_close(packed[where], alone, atol=TOL, rtol=0, msg=backend)


@torch.no_grad()
def test_documents_of_every_row_of_a_micro_batch_stay_apart(models):
    """b=2 with different boundaries per row: checks the batch-major cu_seqlens layout."""
    from tests.attention_models import alone_logits, logits, make_pack, stack_packs

    first = make_pack(DOCS, PAD, seed=1)
    second = make_pack([20, 3, 17], 0, seed=2)
    tokens, positions, cu = stack_packs([first, second])
    for backend, model in models.items():
        packed = logits(model, tokens, positions, cu, backend)
        for row, docs in enumerate((first[3], second[3])):
            for doc, where in _doc_slices(docs):
                alone = alone_logits(model, doc, backend)
                torch.testing.assert_close(packed[row, where], alone, atol=TOL, rtol=0, msg=backend)


@torch.no_grad()
def test_backends_agree(models):
    from tests.attention_models import logits

    tokens, positions, cu, _ = _pack()
    reference = logits(models["local"], tokens, positions, cu, "local")
    for backend, model in models.items():
        torch.testing.assert_close(
            logits(model, tokens, positions, cu, backend), reference, atol=TOL, rtol=0, msg=backend
        )


@torch.no_grad()
def test_padding_at_the_end_of_a_pack_changes_no_document(models):
    from tests.attention_models import logits, make_pack

    short = make_pack(DOCS, 0)
    padded = make_pack(DOCS, 11)
    length = sum(DOCS)
    for backend, model in models.items():
        without = logits(model, *short[:3], backend)[0]
        with_pad = logits(model, *padded[:3], backend)[0]
        torch.testing.assert_close(with_pad[:length], without, atol=TOL, rtol=0, msg=backend)


@torch.no_grad()
def test_a_dropped_document_mask_is_visible(models):
    """The invariance test has teeth: one causal segment over the pack changes later documents."""
    from tests.attention_models import alone_logits, logits

    tokens, positions, cu, docs = _pack()
    one_segment = torch.tensor([[0, tokens.shape[1]]], dtype=torch.int32)
    for backend, model in models.items():
        leaky = logits(model, tokens, positions, one_segment, backend)[0]
        doc, where = list(_doc_slices(docs))[1]
        assert (leaky[where] - alone_logits(model, doc, backend)).abs().max() > 1e3 * TOL, backend


def test_fwd_and_bwd_agree_between_torch_and_local(models):
    """Gradients of every weight match the dense-mask reference (training, not only inference)."""
    from tests.attention_models import logits

    tokens, positions, cu, _ = _pack()
    target = torch.randn(1, tokens.shape[1], 256, generator=torch.Generator().manual_seed(5))
    grads = {}
    for backend in ("local", "torch"):
        model = models[backend]
        model.zero_grad(set_to_none=True)
        (logits(model, tokens, positions, cu, backend) * target).sum().backward()
        grads[backend] = {n: p.grad.clone() for n, p in model.named_parameters()}
        model.zero_grad(set_to_none=True)
    assert grads["local"].keys() == grads["torch"].keys()
    for name, grad in grads["local"].items():
        torch.testing.assert_close(grads["torch"][name], grad, atol=1e-5, rtol=1e-4, msg=name)


@torch.no_grad()
def test_thd_layout_with_positions_restarting_per_document_matches(models):
    """DocumentAttention also takes megatron's thd layout, where RoPE restarts at each document:
    same logits as the sbhd layout with row positions (RoPE is relative)."""
    from megatron_mio.model.document_attention import document_packed_seq_params
    from tests.attention_models import logits

    tokens, positions, cu, docs = _pack()
    sbhd = document_packed_seq_params(cu, tokens.shape[1])
    thd = PackedSeqParams(
        qkv_format="thd", cu_seqlens_q=sbhd.cu_seqlens_q, cu_seqlens_kv=sbhd.cu_seqlens_kv,
        max_seqlen_q=max(DOCS + [PAD]), max_seqlen_kv=max(DOCS + [PAD]),
    )
    model = models["torch"]
    expected = logits(model, tokens, positions, cu, "torch")
    got = logits(model, tokens, positions, cu, "torch", packed_seq_params=thd)
    torch.testing.assert_close(got, expected, atol=TOL, rtol=0)


def test_flex_attention_document_mask_matches_sdpa_per_document():
    """The CUDA fallback's block mask, run eagerly on the CPU (forward only there)."""
    from megatron_mio.model.document_attention import flex_document_attention, sdpa_per_document

    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(40, h, 16, generator=gen) for h in (4, 2, 2))
    cu = torch.tensor([0, 7, 20, 25, 34, 40], dtype=torch.int32)
    with torch.no_grad():
        expected = sdpa_per_document(q, k, v, cu, 40, 0.25)
        got = flex_document_attention(q, k, v, cu, 40, 0.25, compiled=False)
    torch.testing.assert_close(got, expected, atol=TOL, rtol=0)


def test_flex_block_mask_is_built_once_per_micro_batch_by_its_params():
    """The micro-batch's PackedSeqParams owns FlexAttention's block mask: every layer (and a
    recompute) asking it again gets the same mask, another micro-batch gets its own, and that
    mask computes the documents' attention."""
    from megatron_mio.model.document_attention import (
        document_packed_seq_params, flex_document_attention, sdpa_per_document,
    )

    first = document_packed_seq_params(torch.tensor([[0, 7, 20, 20], [0, 5, 20, -1]], dtype=torch.int32), 20)
    second = document_packed_seq_params(torch.tensor([[0, 20, -1, -1], [0, 1, 20, -1]], dtype=torch.int32), 20)
    mask = first.flex_block_mask(40)
    assert first.flex_block_mask(40) is mask
    assert second.flex_block_mask(40) is not mask
    gen = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(40, h, 16, generator=gen) for h in (4, 2, 2))
    for params in (first, second):
        cu = params.cu_seqlens_q
        with torch.no_grad():
            expected = sdpa_per_document(q, k, v, cu, 20, 0.25)
            got = flex_document_attention(q, k, v, cu, 20, 0.25, compiled=False,
                                          block_mask=params.flex_block_mask(40))
        torch.testing.assert_close(got, expected, atol=TOL, rtol=0)


def test_cpu_tensors_use_sdpa_per_document():
    from megatron_mio.model.document_attention import document_attention_kernel, sdpa_per_document

    assert document_attention_kernel(torch.zeros(1, 1, 1)) is sdpa_per_document


@torch.no_grad()
def test_attention_without_document_boundaries_refuses_to_run(models):
    from tests.attention_models import logits

    tokens, positions, cu, _ = _pack()
    with pytest.raises(ValueError, match="dense document mask"):
        logits(models["local"], tokens, positions, cu, "local", attention_mask=None)
    with pytest.raises(ValueError, match="document boundaries"):
        logits(models["torch"], tokens, positions, cu, "torch", packed_seq_params=None)


def test_a_causal_mask_type_for_the_dense_mask_is_refused_at_build(megatron_world):
    from megatron.core.models.gpt import GPTModel

    from megatron_mio.model import build_transformer_config, get_preset
    from megatron_mio.model.attention import layer_spec

    spec = layer_spec("local")
    spec.submodules.self_attention.params["attn_mask_type"] = AttnMaskType.causal
    config = build_transformer_config(get_preset("tiny"))
    with pytest.raises(ValueError, match="fused softmax drops the document mask"):
        GPTModel(config, spec, 256, 64)


def test_a_model_from_a_stock_spec_is_refused(megatron_world):
    from megatron.core.models.gpt import GPTModel

    from megatron_mio.model import build_transformer_config, get_preset
    from megatron_mio.model.attention import check_document_masking

    config = build_transformer_config(get_preset("tiny"))
    stock = GPTModel(config, get_gpt_layer_local_spec(normalization="RMSNorm"), 256, 64)
    with pytest.raises(ValueError, match="does not take document boundaries"):
        check_document_masking(stock)


def test_cu_seqlens_that_do_not_cover_the_pack_are_refused():
    from megatron_mio.model.attention import attention_kwargs

    with pytest.raises(ValueError, match="row 0 must run from 0 to seq_length=10"):
        attention_kwargs(torch.tensor([[0, 4, 8, -1]], dtype=torch.int32), 10, "torch")


@pytest.mark.multiprocess
def test_tensor_and_pipeline_parallel_logits_equal_single_rank(tmp_path):
    """TP=2 (heads split; GQA groups 2 -> 1 per rank, and 1 group split across ranks) for the torch
    and local backends, and PP=2 through megatron's pipeline schedule for the torch backend,
    versus TP=1 with the same master weights, in one 2-rank torchrun run."""
    worker = REPO_ROOT / "tests" / "workers" / "attention_tp.py"
    run_torchrun(worker, 2, ["--out", tmp_path], timeout=300)
    results = torch.load(tmp_path / "results.pt")
    expected = {("tp2", b, g) for b in ("torch", "local") for g in (2, 1)} | {("pp2", "torch", 2)}
    assert set(results) == expected
    for key, (single, parallel) in results.items():
        assert single.shape == parallel.shape == (2, 40, 256)
        torch.testing.assert_close(parallel, single, atol=TOL, rtol=0, msg=str(key))


# ---- one record per backend ----------------------------------------------------------------------


def test_every_backend_record_has_every_piece_and_each_piece_works(megatron_world):
    """A backend is one AttentionBackend record: a record without one of its pieces does not
    construct, and every piece of every record is used here as the trainer uses it."""
    import dataclasses

    from megatron_mio.model.attention import (
        BACKENDS, AttentionBackend, _document_core_attention_classes, available_backends, default_backend,
    )
    from megatron_mio.model.fusions import available_fusions

    fields = dataclasses.fields(AttentionBackend)
    assert all(f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING for f in fields)
    with pytest.raises(TypeError, match="missing 1 required"):
        AttentionBackend(**{f.name: getattr(BACKENDS["torch"], f.name) for f in fields[:-1]})

    cu = torch.tensor([[0, 10, 64, -1]], dtype=torch.int32)
    for name, record in BACKENDS.items():
        assert record.name == name
        if not record.available():
            assert name not in available_backends() and record.missing
            with pytest.raises(ValueError, match="cannot run here"):
                record.layer_spec()
            continue
        spec = record.layer_spec()
        attention = spec.submodules.self_attention
        assert attention.submodules.core_attention is record.core_attention()
        assert attention.params["attn_mask_type"] == record.mask_type
        assert record.core_attention() in _document_core_attention_classes()
        inputs = record.inputs(cu, 64, None)
        assert (inputs.get("packed_seq_params") is not None) != (inputs.get("attention_mask") is not None), name
        fusions = available_fusions(name, "cpu")  # apex and TE absent here: both fusions off
        assert not fusions.masked_softmax_fusion and not fusions.gradient_accumulation_fusion
    assert BACKENDS[default_backend()].default_candidate
    assert not BACKENDS["local"].default_candidate  # the slow exact reference is never the default


@torch.no_grad()
def test_a_new_backend_is_one_record(megatron_world, monkeypatch):
    """Registering a record is all it takes: the spec, the model's inputs, the masking check and
    the fusions all follow it (here a copy of ``torch`` under another name, same logits)."""
    import dataclasses

    from megatron_mio.model import attention
    from tests.attention_models import build_tiny_model, logits

    record = dataclasses.replace(attention.BACKENDS["torch"], name="torch-copy")
    monkeypatch.setitem(attention.BACKENDS, "torch-copy", record)
    assert "torch-copy" in attention.available_backends()
    tokens, positions, cu, _ = _pack()
    reference = build_tiny_model("torch")
    copy = build_tiny_model("torch-copy")
    copy.load_state_dict(reference.state_dict())
    torch.testing.assert_close(logits(copy, tokens, positions, cu, "torch-copy"),
                               logits(reference, tokens, positions, cu, "torch"), atol=0, rtol=0)
    with pytest.raises(ValueError, match="unknown attention backend 'flash'"):
        attention.layer_spec("flash")
