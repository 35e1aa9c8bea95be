"""Tests for the reference models package (small variants only, ~30 s total)."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest

# The models package needs the ``torch`` extra (torch, onnxscript, scikit-learn).
torch = pytest.importorskip("torch")
pytest.importorskip("onnxscript")
pytest.importorskip("sklearn")

import models  # noqa: E402
from models import digits  # noqa: E402

pytestmark = pytest.mark.torch

CNNS = ("resnet18", "resnet50", "mobilenetv2")
RANDOM_MODELS = ("resnet18", "resnet50", "mobilenetv2", "bert", "vit")
SEQ = 16  # the small BERT is tested at the sequence length it is meant for


@pytest.fixture(scope="module", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory):
    """Point the digits cache at a temp dir for this module only (and restore it)."""
    old = os.environ.get("ONNXCOMP_CACHE")
    os.environ["ONNXCOMP_CACHE"] = str(tmp_path_factory.mktemp("onnxcomp_cache"))
    yield
    if old is None:
        os.environ.pop("ONNXCOMP_CACHE", None)
    else:
        os.environ["ONNXCOMP_CACHE"] = old


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx_models")


def _torch_outputs(model: torch.nn.Module, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    with torch.no_grad():
        out = model(*(torch.from_numpy(v) for v in inputs.values()))
    return [o.numpy() for o in (out if isinstance(out, tuple) else (out,))]


def _assert_matches(onnx_path: Path, model: torch.nn.Module, inputs: dict[str, np.ndarray]) -> None:
    ref = _torch_outputs(model, inputs)
    got = models.run_onnx(onnx_path, inputs)
    assert len(got) == len(ref)
    for g, r in zip(got, ref):
        assert g.shape == r.shape
        assert models.cosine(g, r) >= 0.9999
        np.testing.assert_allclose(g, r, rtol=1e-3, atol=1e-4 * max(1.0, float(np.abs(r).max())))


def _ops(path: Path) -> Counter:
    return Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def _io_names(path: Path) -> tuple[list[str], list[str]]:
    g = onnx.load(str(path)).graph
    return [i.name for i in g.input], [o.name for o in g.output]


# ------------------------------------------------------------------ basics


def test_model_names() -> None:
    assert models.MODEL_NAMES == ("resnet18", "resnet50", "mobilenetv2", "bert", "vit", "digits", "decoder", "decoder_kv")
    with pytest.raises(ValueError):
        models.build("alexnet")


@pytest.mark.parametrize(
    ("name", "expected"),
    # Parameter counts of the torchvision reference implementations.
    [("resnet18", 11_689_512), ("resnet50", 25_557_032), ("mobilenetv2", 3_504_872)],
)
def test_full_size_architectures_match_torchvision(name: str, expected: int) -> None:
    from models.mobilenetv2 import MOBILENETV2, MobileNetV2
    from models.resnet import RESNET18, RESNET50, ResNet

    # Constructed without the seeded init/BN calibration to keep this cheap.
    module = {"resnet18": lambda: ResNet(RESNET18), "resnet50": lambda: ResNet(RESNET50)}.get(
        name, lambda: MobileNetV2(MOBILENETV2)
    )()
    assert models.param_count(module) == expected


def test_full_size_transformer_shapes() -> None:
    from models.bert import BERT
    from models.vit import VIT

    assert (BERT.num_layers, BERT.hidden, BERT.num_heads, BERT.intermediate) == (6, 384, 12, 1536)
    assert (VIT.image_size, VIT.patch_size) == (224, 16)


def test_decoder_sizes() -> None:
    """``decoder_size="135m"`` is SmolLM-135M's shape; the KV inputs follow the chosen size."""
    from models.decoder import DECODER_135M, Decoder

    c = DECODER_135M
    assert (c.hidden, c.num_layers, c.num_heads, c.num_kv_heads, c.intermediate, c.vocab_size) == (576, 30, 9, 3, 1536, 49152)
    with torch.device("meta"):  # count parameters without allocating 540 MB
        assert 134_000_000 < models.param_count(Decoder(c)) < 135_000_000
    s = models.spec("decoder_kv", decoder_size="135m")
    assert s.vocab_size == 49152 and len(s.input_names) == 1 + 2 * 30
    x = models.example_inputs("decoder_kv", decoder_size="135m", seq_len=3)
    assert x["past_key_values.0.key"].shape == (1, 3, 3, 64)
    with pytest.raises(ValueError, match="decoder size"):
        models.spec("decoder", decoder_size="huge")


@pytest.mark.parametrize("name", RANDOM_MODELS)
def test_build_is_seeded_and_in_eval_mode(name: str) -> None:
    a = models.build(name, small=True, seed=0)
    b = models.build(name, small=True, seed=0)
    c = models.build(name, small=True, seed=1)
    assert not a.training
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)


@pytest.mark.parametrize("name", CNNS)
def test_batchnorm_stats_are_nontrivial_and_activations_sane(name: str) -> None:
    model = models.build(name, small=True)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns
    for bn in bns:
        # Random, non-identity BN so that BN folding is really tested.
        assert not torch.allclose(bn.running_mean, torch.zeros_like(bn.running_mean))
        assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))
        assert not torch.allclose(bn.weight, torch.ones_like(bn.weight))
    (logits,) = _torch_outputs(model, models.example_inputs(name, small=True, batch=2))
    assert np.isfinite(logits).all()
    assert 1e-2 < np.abs(logits).mean() < 1e2
    assert logits.std(axis=1).min() > 1e-3  # not a constant output


# ------------------------------------------------------------------ export


@pytest.mark.parametrize("name", RANDOM_MODELS)  # digits: see test_digits_small_*
def test_default_export_matches_torch(name: str, out_dir: Path) -> None:
    path = models.export(name, out_dir / f"{name}.onnx", small=True, seq_len=SEQ)
    assert path.exists() and not Path(str(path) + ".data").exists()  # single file
    model_proto = onnx.load(str(path))
    onnx.checker.check_model(model_proto, full_check=True)
    assert model_proto.opset_import[0].version >= 17
    s = models.spec(name, small=True)
    inputs, outputs = _io_names(path)
    assert tuple(inputs) == s.input_names and tuple(outputs) == s.output_names
    ops = _ops(path)
    assert "BatchNormalization" not in ops  # folded by the optimiser
    model = models.build(name, small=True)
    _assert_matches(path, model, models.example_inputs(name, small=True, seq_len=SEQ, seed=7))


# resnet50 shares resnet18's export path; kept out to save ~2 s.
@pytest.mark.parametrize("name", ["resnet18", "mobilenetv2", "digits"])
def test_keep_batchnorm_dynamic_batch(name: str, out_dir: Path) -> None:
    path = models.export(
        name, out_dir / f"{name}.bn.dyn.onnx", small=True, keep_batchnorm=True, dynamic_batch=True
    )
    onnx.checker.check_model(str(path))
    ops = _ops(path)
    assert ops["BatchNormalization"] > 0
    assert ops["BatchNormalization"] == sum(
        isinstance(m, torch.nn.BatchNorm2d) for m in models.build(name, small=True).modules()
    )
    if name == "mobilenetv2":
        # The raw (unoptimised) export keeps torch's Identity nodes (clones).
        assert ops["Identity"] > 0
    inp = onnx.load(str(path)).graph.input[0]
    assert inp.type.tensor_type.shape.dim[0].dim_param == "batch"
    model = models.build(name, small=True)
    for batch in (1, 3):
        _assert_matches(path, model, models.example_inputs(name, small=True, batch=batch, seed=batch))


@pytest.mark.parametrize("name", ["bert", "vit"])
def test_transformer_dynamic_export(name: str, out_dir: Path) -> None:
    path = models.export(name, out_dir / f"{name}.dyn.onnx", small=True, dynamic_batch=True, seq_len=SEQ)
    graph = onnx.load(str(path)).graph
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    model = models.build(name, small=True)
    seq_lens = (SEQ, 7) if name == "bert" else (SEQ,)
    if name == "bert":
        assert all(i.type.tensor_type.shape.dim[1].dim_param == "seq" for i in graph.input)
    for batch in (1, 3):
        for seq in seq_lens:
            _assert_matches(path, model, models.example_inputs(name, small=True, batch=batch, seq_len=seq, seed=seq))


@pytest.mark.parametrize("keep_batchnorm", [False, True])
def test_torchscript_exporter_and_custom_module(keep_batchnorm: bool, out_dir: Path) -> None:
    # A modified copy (as after pruning/fine-tuning) is exported via module=.
    model = models.build("resnet18", small=True)
    with torch.no_grad():
        model.fc.bias.add_(1.0)
    path = models.export(
        "resnet18",
        out_dir / f"r18.ts.{keep_batchnorm}.onnx",
        small=True,
        keep_batchnorm=keep_batchnorm,
        dynamic_batch=True,
        exporter="torchscript",
        module=model,
    )
    assert _io_names(path) == (["input"], ["logits"])
    assert (_ops(path)["BatchNormalization"] > 0) == keep_batchnorm
    for batch in (1, 3):
        _assert_matches(path, model, models.example_inputs("resnet18", small=True, batch=batch))


def test_bert_graph_has_explicit_attention_pattern(out_dir: Path) -> None:
    path = out_dir / "bert.onnx"
    if not path.exists():
        models.export("bert", path, small=True, seq_len=SEQ)
    from models.bert import BERT_SMALL
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    ops = Counter(n.op_type for n in graph.node)
    layers = BERT_SMALL.num_layers
    assert ops["Softmax"] == layers
    # Q, K, V, out, FFN-in, FFN-out projections + QK^T and PV per layer.
    assert ops["MatMul"] == 8 * layers
    assert ops["LayerNormalization"] == 2 * layers + 1
    consts = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    shapes = [consts[n.input[1]].tolist() for n in graph.node if n.op_type == "Reshape" and n.input[1] in consts]
    head_dim = BERT_SMALL.hidden // BERT_SMALL.num_heads
    # Split-heads reshapes infer the head count (-1) so head pruning only needs weight slicing.
    assert shapes.count([1, SEQ, -1, head_dim]) == 3 * layers
    assert shapes.count([1, SEQ, -1]) == layers


def test_bert_outputs_and_masking() -> None:
    from models.bert import BERT_SMALL

    model = models.build("bert", small=True)
    inputs = models.example_inputs("bert", small=True, batch=3, seq_len=SEQ, seed=3)
    assert inputs["input_ids"].dtype == np.int64 and inputs["attention_mask"].dtype == np.int64
    assert inputs["attention_mask"][1:].sum() < 2 * SEQ  # rows 1.. are padded
    hidden, pooled = _torch_outputs(model, inputs)
    assert hidden.shape == (3, SEQ, BERT_SMALL.hidden)
    assert pooled.shape == (3, BERT_SMALL.hidden)
    # Mean pooling over real tokens only.
    m = inputs["attention_mask"][..., None]
    np.testing.assert_allclose(pooled, (hidden * m).sum(1) / m.sum(1), rtol=1e-5, atol=1e-5)
    # Changing padded token ids must not change the sentence embedding.
    changed = {k: v.copy() for k, v in inputs.items()}
    changed["input_ids"][changed["attention_mask"] == 0] = 7
    _, pooled2 = _torch_outputs(model, changed)
    np.testing.assert_allclose(pooled, pooled2, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------ calibration


@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_calibration_npz(name: str, out_dir: Path) -> None:
    # Graph input names == spec input names is asserted by the export tests.
    input_names = models.spec(name, small=True).input_names
    calib = models.make_calibration(name, out_dir / f"{name}.calib", n=5, small=True, seq_len=SEQ)
    assert calib == out_dir / f"{name}.calib"  # exact path, no ".npz" appended
    with np.load(calib) as data:
        assert sorted(data.files) == sorted(input_names)
        example = models.example_inputs(name, small=True, batch=1, seq_len=SEQ)
        for key in data.files:
            assert data[key].shape == (5, *example[key].shape[1:])  # samples stacked on axis 0
            assert data[key].dtype == example[key].dtype
            if key != "attention_mask":  # masks of full-length rows are all ones anyway
                # Calibration data differs from the evaluation examples.
                assert not np.array_equal(data[key][:1], example[key])


# ------------------------------------------------------------------ digits


def test_digits_split_npz(tmp_path: Path) -> None:
    test = digits.test_split_npz(tmp_path / "test.npz")
    val = digits.validation_split_npz(tmp_path / "val.npz")
    train = digits.train_split_npz(tmp_path / "train.npz")
    with np.load(test) as te, np.load(val) as va, np.load(train) as tr:
        assert set(te.files) == set(va.files) == set(tr.files) == {"input", "label"}
        assert te["input"].shape == (450, 1, 8, 8) and te["input"].dtype == np.float32
        assert va["input"].shape == (449, 1, 8, 8) and tr["input"].shape == (898, 1, 8, 8)
        for split in (te, va):
            assert split["label"].dtype == np.int64 and set(np.unique(split["label"])) == set(range(10))
        # Three disjoint splits: no image of the validation or test split was trained on.
        rows = [{x.tobytes() for x in s["input"]} for s in (tr, va, te)]
        assert not (rows[0] & rows[1] or rows[0] & rows[2] or rows[1] & rows[2])
        # Normalised with training statistics.
        assert abs(float(tr["input"].mean())) < 1e-4 and abs(float(tr["input"].std()) - 1) < 1e-4


def test_digits_trainer_short_schedule_is_deterministic_and_cached(tmp_path: Path) -> None:
    m1, acc1 = digits.train_or_load(tmp_path / "a", small=True, epochs=1)
    m2, acc2 = digits.train_or_load(tmp_path / "b", small=True, epochs=1)
    assert acc1 == acc2 and 0.0 <= acc1 <= 1.0
    s1, s2 = m1.state_dict(), m2.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    entry = next((tmp_path / "a").iterdir())
    assert {"weights.pt", "meta.json", "test.npz", "val.npz", "train.npz"} <= {p.name for p in entry.iterdir()}
    # Second call is served from the cache: same weights, no retraining.
    mtime = (entry / "weights.pt").stat().st_mtime_ns
    m3, acc3 = digits.train_or_load(tmp_path / "a", small=True, epochs=1)
    assert acc3 == acc1 and (entry / "weights.pt").stat().st_mtime_ns == mtime
    assert all(torch.equal(s1[k], v) for k, v in m3.state_dict().items())


@pytest.mark.trains_digits
def test_digits_small_reaches_target_accuracy_and_onnx_agrees() -> None:
    model, acc = digits.train_or_load(small=True)  # module-scoped temp cache, ~2-3 s
    assert acc >= 0.95
    assert digits.cache_info(small=True)["test_accuracy"] == acc
    assert isinstance(models.build("digits", small=True), digits.DigitsNet)  # served from the cache
    path = digits.onnx_path(small=True)
    assert path == digits.onnx_path(small=True)  # cached, not re-exported
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert _io_names(path) == (["input"], ["logits"])
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert "BatchNormalization" not in _ops(path)
    d = digits.load_data()
    x, y = d.normalise(d.x_test), d.y_test
    _assert_matches(path, model, {"input": x[:64]})
    (logits,) = models.run_onnx(path, {"input": x})
    assert float((logits.argmax(1) == y).mean()) == pytest.approx(acc, abs=1 / len(y))
