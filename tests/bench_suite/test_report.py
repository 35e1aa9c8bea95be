"""RESULTS.md rendering and the plot on fake documents."""

from __future__ import annotations

from bench_suite_fakes import doc, row
from suite_plot import plot
from suite_report import model_table, render_markdown


def _rows():
    return [
        row("resnet18", "fp32", "reference", "reference", label="FP32"),
        row("resnet18", "onnxcomp:int8", "onnxcomp", "int8", ratio=0.6, cosine=0.995, label="onnxcomp int8"),
        row("resnet18", "ort:quantize_static", "peer", "int8", ratio=0.5, cosine=0.996, label="ORT quantize_static"),
        row("resnet18", "torch-pruning", "peer", "prune", status="failed", error="RuntimeError: a|b\nsecond line",
            label="Torch-Pruning"),
        row("digits", "fp32", "reference", "reference", accuracy=0.98, label="FP32"),
        row("digits", "onnxcomp:prune", "onnxcomp", "prune", ratio=0.5, accuracy=0.9, label="onnxcomp prune"),
    ]


def test_markdown_states_machine_runtime_and_command():
    md = render_markdown(doc(_rows(), ["resnet18", "digits"]))
    assert "Test CPU; 2 logical CPUs" in md
    assert "onnxruntime 1.32.0" in md and "2 intra-op threads" in md and "CPUExecutionProvider" in md
    assert "`python bench/run.py --quick`" in md
    assert "onnxsim (not installed)" in md
    assert "### resnet18" in md and "### digits" in md and "results.png" in md


def test_markdown_reports_the_loss_and_the_failure():
    md = render_markdown(doc(_rows(), ["resnet18", "digits"]))
    loses = md.split("## Where onnxcomp loses")[1].split("## Head-to-head")[0]
    assert "ORT quantize_static ×0.500" in loses and "onnxcomp int8 ×0.600" in loses
    assert "**FAILED**" in md
    # Error text is kept but cannot break the table: pipe escaped, newline flattened.
    assert "RuntimeError: a\\|b second line" in md


def test_control_session_is_stated():
    rows = _rows()
    rows[0]["timing"]["control_latency_ratio"] = 1.05
    d = doc(rows, ["resnet18", "digits"])
    d["models"][0]["timing"]["control_latency_ratio"] = 1.05
    md = render_markdown(d)
    assert "second session of the FP32 file ran at ×1.050" in md and "below 10.0% count as ties" in md


def test_accuracy_column_only_for_labelled_models():
    rows = _rows()
    cnn = model_table([r for r in rows if r["model"] == "resnet18"])
    digits = model_table([r for r in rows if r["model"] == "digits"])
    assert "accuracy" not in cnn.splitlines()[0]
    assert "accuracy" in digits.splitlines()[0] and "90.00%" in digits
    # every row has as many cells as the header
    for table in (cnn, digits):
        widths = {line.count(" | ") for line in table.splitlines() if not line.startswith("|--")}
        assert len(widths) == 1


def test_small_run_is_flagged():
    d = doc(_rows(), ["resnet18"])
    d["config"]["small"] = True
    assert "small* debug variants" in render_markdown(d)


def test_plot_writes_a_png(tmp_path):
    out = plot(doc(_rows(), ["resnet18", "digits"]), tmp_path / "r.png")
    assert out is not None and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_measured_rows_writes_nothing(tmp_path):
    rows = [row("resnet18", "fp32", "reference", "reference", status="failed", error="x")]
    assert plot(doc(rows, ["resnet18"]), tmp_path / "r.png") is None
    assert not (tmp_path / "r.png").exists()


def test_summary_has_a_row_per_model_and_a_column_per_tool():
    md = render_markdown(doc(_rows(), ["resnet18", "digits"]))
    summary = md.split("## Summary")[1].split("## Where onnxcomp loses")[0]
    table = [line for line in summary.splitlines() if line.startswith("|")]
    # Columns follow the tool registry's order, not the order rows happened to arrive in.
    assert table[0] == ("| model | FP32 p50 ms | onnxcomp int8 | ORT quantize_static | onnxcomp prune | "
                        "Torch-Pruning |")
    assert table[2] == "| resnet18 | 10.00 | ×0.600 · 0.9950 | ×0.500 · 0.9960 | n/a | **FAILED** |"
    assert table[3] == "| digits | 10.00 | n/a | n/a | ×0.500 · 90.00% | n/a |"
