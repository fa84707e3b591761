"""Figures and tables for papers: one style per mixer in every figure, TrueType fonts, reports that
regenerate byte for byte, and LaTeX tables that compile (with a real engine) and fit the page."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import pytest

from harness.report import cli as report
from harness.report import kit

ROOT = Path(__file__).resolve().parents[2]


def shipped_cpu_copy() -> list[Path]:
    """The shipped records of the CPU copy benchmark (16 runs: 4 mixers x 2 protocols x 2 seeds)."""
    found = []
    for path in sorted((ROOT / "results" / "published" / "runs").glob("copy-*.json")):
        config = json.loads(path.read_text())["config"]
        if config.get("benchmark") == "copy_benchmark" and config["train"]["profile"] == "cpu":
            found.append(path)
    return found


def test_no_two_registered_mixers_share_a_style():
    styles = [kit.mixer_style(m) for m in kit.mixer_order()]
    keys = [(s["color"], s["marker"], repr(s["linestyle"])) for s in styles]
    assert len(set(keys)) == len(keys) == len(kit.mixer_order())
    assert len({s["marker"] for s in styles}) == len(styles)  # markers alone tell them apart in grey print
    assert all(s["color"] in kit.PALETTE for s in styles) and kit.REFERENCE_COLOR not in kit.PALETTE


def test_a_mixer_keeps_its_style_whatever_else_the_figure_holds():
    small = kit.series_styles(["tmm", "attention"])
    large = kit.series_styles(["hyena", "mamba", "tmm", "attention, position=nope", "attention, position=rope"])
    assert small["tmm"] == large["tmm"]
    assert large["attention, position=nope"]["color"] == large["attention, position=rope"]["color"] == small["attention"]["color"]
    assert large["attention, position=nope"]["linestyle"] != large["attention, position=rope"]["linestyle"]
    registered = [kit.mixer_style(m) for m in kit.mixer_order()]
    assert all(kit.mixer_style(f"plugin_{i}") not in registered for i in range(50))
    variants = kit.series_styles(["tmm", "tmm-fft", "tmm-dense"])  # the scaling benchmark's variants of one mixer
    assert {v["color"] for v in variants.values()} == {kit.mixer_style("tmm")["color"]}
    assert len({repr(v["linestyle"]) for v in variants.values()}) == 3


def test_labels_name_only_the_options_that_differ_within_the_figure():
    extra = ("mixer.position", "mixer.impl", "model.short_conv")
    series = [("attention", "nope", None, 3), ("attention", "rope", None, 3), ("tmm", None, None, 0)]
    labels = kit.series_labels(series, extra)
    assert labels == {series[0]: "attention, position=nope", series[1]: "attention, position=rope", series[2]: "tmm"}


def test_log_axes_label_no_minor_ticks():
    fig, ax = plt.subplots()
    ax.plot([1.3e11, 3.1e12], [1, 2])
    ax.set_xscale("log")
    kit.tidy_log_axis(ax, "x")
    fig.canvas.draw()
    assert not [t.get_text() for t in ax.get_xticklabels(minor=True) if t.get_text()]
    shown = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
    assert "2e11" in shown and "1e12" in shown
    plt.close(fig)


def test_latex_cells_escape_text_and_write_complexities_as_math():
    assert kit.latex_text("O(n^2)") == "$O(n^{2})$"
    assert kit.latex_text("O(n) with flash kernels, O(n log n) else") == r"$O(n)$ with flash kernels, $O(n\,\log\,n)$ else"
    assert kit.latex_text("linear_attention 50% & #1") == r"linear\_attention 50\% \& \#1"
    assert kit.latex_text("99.0 ± 0.8") == r"99.0 $\pm$ 0.8" and kit.latex_text("exact >= 90%") == r"exact $\geq$ 90\%"
    assert [kit.latex_text(v) for v in (float("nan"), None, "-", "", 8832.0)] == ["---"] * 4 + ["8832"]


def test_latex_tables_keep_the_chosen_columns_right_aligned_numbers_and_no_empty_column():
    df = pd.DataFrame({"mixer": ["tmm", "attention"], "mixer.position": [None, "nope"], "params": [8832, 16384],
                       "exact L8 (%)": ["99.0 ± 0.8", "-"], "empty": [float("nan"), "-"], "tokens/s": ["1", "2"]})
    spec = {"columns": ["mixer", "settings", "params", "exact L* (%)", "empty"], "names": {"exact L* (%)": "L*"}}
    tex = kit.latex_table(df, spec)
    assert r"\begin{tabular}{llrr}" in tex and r"\toprule" in tex and r"\bottomrule" in tex
    assert r"mixer & position & params & L8 \\" in tex and "empty" not in tex and "tokens" not in tex
    assert r"tmm & --- & 8832 & 99.0 $\pm$ 0.8 \\" in tex and "nan" not in tex
    wide = kit.latex_table(pd.DataFrame({f"column {i}": ["a long cell of text"] for i in range(12)}))
    assert wide.startswith("% resized to \\textwidth") and r"\resizebox{\textwidth}{!}{%" in wide


def test_sorting_is_numeric():
    assert sorted([("tmm", 128), ("tmm", 32), ("attention", 64), ("tmm", 64)], key=kit.sort_key) == [
        ("attention", 64), ("tmm", 32), ("tmm", 64), ("tmm", 128)]
    assert sorted([None, 10, 9, "x"], key=kit.sort_key) == [None, 9, 10, "x"]
    assert sorted(["tmm, d_model=128", "tmm, d_model=64", "L16", "L8"], key=kit.sort_key) == [
        "L8", "L16", "tmm, d_model=64", "tmm, d_model=128"]


@pytest.fixture(scope="module")
def shipped_copy_report(tmp_path_factory):
    """The CPU copy benchmark's report from the shipped records, written twice into the same folder:
    (the folder, every file's bytes after the first pass)."""
    shipped = shipped_cpu_copy()
    if not shipped:
        pytest.skip("no shipped CPU copy records under results/published/runs")
    root = tmp_path_factory.mktemp("shipped")
    (root / "runs").mkdir()
    for path in shipped:
        shutil.copy(path, root / "runs" / path.name)
    assert report.main(["--benchmark", "copy_benchmark", f"results_dir={root}"]) == 0
    first = {p: p.read_bytes() for p in sorted((root / "copy").rglob("*")) if p.is_file()}
    assert report.main(["--benchmark", "copy_benchmark", f"results_dir={root}"]) == 0
    return root / "copy", first


def test_reporting_twice_writes_byte_identical_files(shipped_copy_report):
    out, first = shipped_copy_report
    assert any(p.suffix == ".pdf" for p in first) and any(p.suffix == ".png" for p in first)
    changed = [str(p.relative_to(out)) for p, data in first.items() if p.read_bytes() != data]
    assert not changed, f"a second report rewrote {changed}"


def test_pdfs_embed_truetype_fonts_never_type3(shipped_copy_report):
    out, _ = shipped_copy_report
    pdfs = sorted(out.rglob("*.pdf"))
    assert pdfs
    for pdf in pdfs:
        data = pdf.read_bytes()
        assert b"/Type3" not in data, f"{pdf.name} has a Type 3 font"
        assert b"/TrueType" in data or b"/CIDFontType2" in data, pdf.name
        assert b"/CreationDate" not in data, pdf.name


def test_every_figure_is_printed_at_a_column_width(shipped_copy_report):
    from PIL import Image

    out, _ = shipped_copy_report
    dpi = kit.settings()["figure"]["dpi"]
    for png in sorted(out.rglob("*.png")):
        width_in = Image.open(png).size[0] / dpi
        column = kit.figure_width(png.stem)
        assert column * 0.85 <= width_in <= column * 1.1, f"{png.name}: {width_in:.2f} in, column {column} in"


def test_a_mixer_has_the_same_style_in_two_figures(shipped_copy_report):
    """Drawn again through the report functions: tmm's line in loss-vs-FLOPs and in accuracy-vs-length."""
    from harness.report import copy
    from harness.run.records import load_records

    records = [r for r in kit.with_added_defaults(load_records(shipped_copy_report[0].parent / "runs")[0])
               if r["config"]["train"]["profile"] == "cpu"]
    seen = {}
    real_save = kit.save_figure

    def grab(fig, out_dir, stem):
        for ax in fig.axes:
            for line in ax.get_lines():
                if line.get_label() in ("tmm", "attention", "mamba", "hyena"):
                    seen.setdefault(line.get_label(), set()).add((line.get_color(), line.get_marker(),
                                                                  repr(line.get_linestyle())))
        plt.close(fig)
        return []

    copy.save_figure = grab
    try:
        copy.plot_loss_vs_flops(records, Path("unused"), "t")
        copy.plot_accuracy_vs_length(records, Path("unused"), "t")
    finally:
        copy.save_figure = real_save
    assert set(seen) == {"tmm", "attention", "mamba", "hyena"}
    assert all(len(styles) == 1 for styles in seen.values()), seen
    for name, styles in seen.items():
        assert {s[:2] for s in styles} == {(kit.mixer_style(name)["color"], kit.mixer_style(name)["marker"])}


ENGINES = ("pdflatex", "lualatex", "xelatex")
WRAPPER = r"""\documentclass[10pt]{article}
\usepackage[T1]{fontenc}
\usepackage{booktabs}
\usepackage{graphicx}
\setlength{\textwidth}{%(width)spt}
\setlength{\hfuzz}{2pt}
\begin{document}
%(body)s
\end{document}
"""


def compile_tables(engine: str, tables: list[Path], work: Path) -> tuple[bool, str]:
    body = "\n".join(rf"\noindent\input{{{t.as_posix()}}}\par\bigskip" for t in tables)
    (work / "tables.tex").write_text(WRAPPER % {"width": kit.settings()["latex"]["text_width_pt"], "body": body})
    done = subprocess.run([engine, "-interaction=nonstopmode", "-halt-on-error", "tables.tex"], cwd=work,
                          capture_output=True, text=True, timeout=120)
    log = (work / "tables.log").read_text(errors="replace") if (work / "tables.log").exists() else done.stdout
    return done.returncode == 0, log


def test_every_generated_latex_table_compiles_and_fits_the_text_width(shipped_copy_report, tmp_path):
    engine = next((e for e in ENGINES if shutil.which(e)), None)
    if engine is None:
        pytest.skip("no LaTeX engine (pdflatex, lualatex, xelatex) on PATH: .ci/run installs texlive-latex-base "
                    "and texlive-latex-recommended; apt-get install them to run this test")
    tables = sorted(shipped_copy_report[0].rglob("*.tex")) + sorted(
        p for p in (ROOT / "results").rglob("*.tex") if "superseded" not in p.parts)
    ok, log = compile_tables(engine, tables, tmp_path)
    if not ok:  # name the tables that fail, one by one
        failing = [t for t in tables if not compile_tables(engine, [t], tmp_path)[0]]
        pytest.fail(f"{engine} fails on {[str(t) for t in failing]}:\n{log[-2000:]}")
    overfull = re.findall(r"Overfull \\hbox \(([\d.]+)pt too wide\)", log)
    assert not overfull, f"tables wider than \\textwidth by {overfull} pt"
