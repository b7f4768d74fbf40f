"""`saekit report` (saekit.evaluation.comparison): inputs in every accepted form, the table,
what each figure draws, figures present only when their metric is, a self-contained page, and
the command line."""

import base64
import json
import re

import pytest
from eval_helpers import evaluated_saes
from matplotlib.figure import Figure

from saekit.evaluation.comparison import FIGURES, load_docs, write_report
from saekit.evaluation.tables import summary_table


@pytest.fixture(scope="module")
def docs():
    return load_docs(list(evaluated_saes()))


def test_load_docs_from_dirs_runs_and_files(tmp_path, docs):
    assert list(docs) == ["topk-k4", "topk-k8"]
    run = evaluated_saes()[0].parent.parent  # <run>/saes/<name>
    assert list(load_docs([run])) == ["topk-k4"]
    combined = tmp_path / "all.json"
    combined.write_text(
        json.dumps({str(p): json.loads((p / "eval.json").read_text()) for p in evaluated_saes()})
    )
    assert list(load_docs([combined])) == ["topk-k4", "topk-k8"]
    # the same name twice stays two rows
    assert list(load_docs([evaluated_saes()[0], evaluated_saes()[0]])) == ["topk-k4", "topk-k4 (2)"]
    with pytest.raises(FileNotFoundError):
        load_docs([tmp_path / "missing"])


def test_table_values(docs):
    header, rows = summary_table(docs)
    assert header[:4] == ["SAE", "arch", "latents", "L0"]
    assert "CE score" in header and "AUC k=1" in header and "MCC" not in header  # no synthetic
    assert rows[0][header.index("CE/KL convention")] == "saekit"
    l0 = header.index("L0")
    assert rows[0][l0] == format(docs["topk-k4"]["core"]["l0"], ".3g") == "4"
    fvu = header.index("FVU")
    assert rows[1][fvu] == f"{docs['topk-k8']['core']['fvu']:.4g}"


def test_report_page(tmp_path, docs):
    report = write_report(docs, tmp_path / "cmp.html", title="Tiny comparison")
    names = sorted(p.name for p in report.figures)
    assert names == [
        f"cmp_{n}.png"
        for n in ("adaptive", "adaptive_budget", "density", "pareto_ce", "pareto_fvu", "probing")
    ]
    page = report.html.read_text()
    assert "<title>Tiny comparison</title>" in page and "topk-k8" in page
    assert "saekit convention: kept tokens only" in page
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 6
    assert all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in images)
    assert "http://" not in page and "https://" not in page  # self-contained


def test_figures_only_for_present_metrics(tmp_path, docs):
    core_only = {
        n: {k: v for k, v in d.items() if k in ("sae", "core", "density")} for n, d in docs.items()
    }
    report = write_report(core_only, tmp_path / "core.html")
    assert sorted(p.stem for p in report.figures) == ["core_density", "core_pareto_fvu"]


def draw(name, docs):
    """The axes a figure draws, or None when it has nothing to draw."""
    spec = next(f for f in FIGURES if f.name == name)
    ax = Figure().add_subplot()
    return ax if spec.draw(ax, docs) else None


def series(ax):
    return {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in ax.lines}


def test_pareto_figures_draw_one_line_per_architecture(docs):
    ax = draw("pareto_fvu", docs)
    l0 = [docs[n]["core"]["l0"] for n in ("topk-k4", "topk-k8")]
    fvu = [docs[n]["core"]["fvu"] for n in ("topk-k4", "topk-k8")]
    assert series(ax) == {"topk": (l0, fvu)}
    ax = draw("pareto_ce", docs)
    assert series(ax)["topk"][1] == [docs[n]["spliced"]["ce_loss_score"] for n in docs]
    assert "saekit convention" in ax.get_ylabel()


def test_adaptive_figures_draw_every_setting_with_its_training_star(docs):
    ax = draw("adaptive", docs)
    lines = series(ax)
    curve = docs["topk-k4"]["adaptive"]["curves"]["topk_k"]
    assert lines["topk-k4: topk_k"] == ([p["l0"] for p in curve["points"]],
                                        [p["fvu"] for p in curve["points"]])  # fmt: skip
    stars = [line for line in ax.lines if line.get_marker() == "*"]
    assert [(s.get_xdata()[0], s.get_ydata()[0]) for s in stars][0] == (
        curve["l0_at_train"],
        curve["fvu_at_train"],
    )
    by_budget = series(draw("adaptive_budget", docs))["topk-k8: topk_k"][0]
    assert by_budget[:3] == [1 / 8, 2 / 8, 3 / 8] and by_budget[-1] == 4.0


def test_mode_steering_and_zf_figures(docs):
    assert draw("spliced_variants", docs) is None  # one inference mode each: nothing to add
    variant = {"ce_spliced": 4.0, "delta_ce": 0.2, "l0": 4.0}
    g = {
        "sae": {"architecture": "gsae"},
        "core": {"l0": 4.0},
        "spliced": {"convention": "saekit", "variants": {
            "topk": {**variant, "label_informed": False},
            "gradient": {**variant, "delta_ce": 0.3, "label_informed": True},
        }},
        "steering": {"mean_logit_shift_per_norm": 3.0},
        "afa": {"zf_sample": {"input_norm": [1.0, 2.0], "code_norm": [0.5, 2.5]}},
    }  # fmt: skip
    lines = series(draw("spliced_variants", {"g": g}))
    assert lines == {"gsae topk": ([4.0], [0.2]), "gsae gradient (label-informed)": ([4.0], [0.3])}
    assert series(draw("steering", {"g": g})) == {"gsae": ([4.0], [3.0])}
    ax = draw("zf", {"g": g})
    assert ax.collections[0].get_offsets().tolist() == [[1.0, 0.5], [2.0, 2.5]]
    labels = set(series(ax))
    assert {"‖f̃‖ = ‖x‖", "ε(h−1) = 0.25", "ε(h−1) = 0.5", "ε(h−1) = 1"} <= labels


def rows(fvus, heldout, l0s, dead):
    return [
        {"step": 10 * (i + 1), "tokens": 100 * (i + 1), "fvu": f, "heldout_fvu": h, "l0": l,
         "dead_frac": d}
        for i, (f, h, l, d) in enumerate(zip(fvus, heldout, l0s, dead))
    ]  # fmt: skip


def test_training_curves_show_heldout_beside_training_fvu_and_only_informative_panels():
    from saekit.training.report import training_curves

    flat = {"topk": rows([0.5, 0.3, 0.2], [0.55, 0.35, 0.3], [8, 8, 8], [0, 0, 0])}
    fig = training_curves(flat)
    (ax,) = fig.axes  # L0 and dead fraction never change: no panel for them
    assert ax.get_title() == "FVU" and ax.get_yscale() == "log"
    train, held = ax.get_lines()
    assert train.get_label() == "topk (training batch)" and train.get_linestyle() == "--"
    assert held.get_label() == "topk (held-out)" and train.get_color() == held.get_color()
    assert list(train.get_xdata()) == [100, 200, 300]
    assert list(train.get_ydata()) == [0.5, 0.3, 0.2]
    assert list(held.get_ydata()) == [0.55, 0.35, 0.3]
    moving = {
        **flat,
        "jumprelu": rows([0.6, 0.4, 0.3], [0.6, 0.5, 0.4], [40, 20, 16], [0, 0.1, 0.2]),
    }
    fig = training_curves(moving)
    assert [a.get_title() for a in fig.axes] == ["FVU", "L0 (training batch)", "dead fraction"]
    assert [list(line.get_ydata()) for line in fig.axes[2].get_lines()] == [
        [0, 0, 0],
        [0, 0.1, 0.2],
    ]
    assert len(fig.axes[0].get_lines()) == 4


def test_data_passes_says_how_often_training_saw_each_token():
    from saekit.training.report import data_passes

    cache = {"data": {"source": "cache", "tokens": 150_000}, "training": {"tokens": 1_536_000}}
    assert data_passes(cache) == (
        "1,536,000 training tokens = 10.2 passes over the 150,000-token activation cache"
    )
    synthetic = {"data": {"source": "synthetic"}, "training": {"tokens": 4096}}
    assert data_passes(synthetic) == "4,096 training tokens, fresh synthetic samples (no repeats)"
    model = {"data": {"source": "model"}, "training": {"tokens": 2048}}
    assert data_passes(model) == "2,048 training tokens streamed from the model (each seen once)"


def test_cli_report(tmp_path, capsys):
    from saekit.cli.main import main

    out = tmp_path / "r" / "report.html"
    assert main(["report", *map(str, evaluated_saes()), "-o", str(out)]) == 0
    assert f"report: {out} (2 SAEs, 6 figures)" in capsys.readouterr().out
    assert 'id="fig-pareto_fvu"' in out.read_text()
