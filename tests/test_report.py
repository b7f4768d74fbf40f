"""`saekit report`: inputs in every accepted form, the table, figures present only when their
metric is, a self-contained page, and the command line."""

import base64
import json
import re

import pytest
from eval_helpers import evaluated_saes

from saekit.evaluation.comparison import load_docs, table, write_report


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
    header, rows = table(docs)
    assert header[:4] == ["SAE", "arch", "latents", "L0"]
    assert "CE score" in header and "AUC k=1" in header and "MCC" not in header  # no synthetic
    l0 = header.index("L0")
    assert rows[0][l0] == format(docs["topk-k4"]["core"]["l0"], ".3g") == "4"
    fvu = header.index("FVU")
    assert rows[1][fvu] == f"{docs['topk-k8']['core']['fvu']:.4g}"


def test_report_page(tmp_path, docs):
    report = write_report(docs, tmp_path / "cmp.html", title="Tiny comparison")
    names = sorted(p.name for p in report.figures)
    assert names == [
        f"cmp_{n}.png" for n in ("adaptive", "density", "pareto_ce", "pareto_fvu", "probing")
    ]
    page = report.html.read_text()
    assert "<title>Tiny comparison</title>" in page and "topk-k8" in page
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 5
    assert all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in images)
    assert "http://" not in page and "https://" not in page  # self-contained


def test_figures_only_for_present_metrics(tmp_path, docs):
    core_only = {
        n: {k: v for k, v in d.items() if k in ("sae", "core", "density")} for n, d in docs.items()
    }
    report = write_report(core_only, tmp_path / "core.html")
    assert sorted(p.stem for p in report.figures) == ["core_density", "core_pareto_fvu"]


def test_cli_report(tmp_path):
    from saekit.cli import report
    from saekit.cli.common import Parser

    parser = Parser(prog="saekit")
    report.add_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "r" / "report.html"
    args = parser.parse_args(["report", *map(str, evaluated_saes()), "-o", str(out)])
    assert report.run(args) == 0
    assert out.is_file() and (out.parent / "report_pareto_fvu.png").is_file()
