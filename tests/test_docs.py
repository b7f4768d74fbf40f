"""The pages that code comments cite: every `docs/<page>.md#anchor` written anywhere in the
repository, and every relative link between the docs pages, points at an anchor that exists."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = ("methods", "evaluation")
SOURCES = ["saekit", "tests", "benchmarks", "docs", "README.md"]
# docs/methods.md#topk in code; (methods.md#topk) or (evaluation.md#core) between pages.
CITATION = re.compile(r"(?:docs/|\()((?:methods|evaluation)\.md)#([A-Za-z0-9_-]+)")


def anchors(page: str) -> set[str]:
    return set(re.findall(r'<a id="([^"]+)"></a>', (ROOT / "docs" / page).read_text()))


def cited() -> list[tuple[str, str, str]]:
    files = []
    for name in SOURCES:
        path = ROOT / name
        files += [path] if path.is_file() else sorted(path.rglob("*"))
    out = []
    for file in files:
        if file.suffix not in (".py", ".c", ".md") or not file.is_file():
            continue
        for page, anchor in CITATION.findall(file.read_text(encoding="utf-8")):
            out.append((str(file.relative_to(ROOT)), page, anchor))
    return out


def test_cited_anchors_exist():
    known = {f"{p}.md": anchors(f"{p}.md") for p in PAGES}
    sites = cited()
    assert len(sites) > 20  # the pages link each other at least
    broken = [f"{f}: {page}#{a}" for f, page, a in sites if a not in known[page]]
    assert not broken, "anchors that do not exist:\n" + "\n".join(broken)


def test_anchors_are_unique_and_every_method_has_a_paper():
    for page in PAGES:
        text = (ROOT / "docs" / f"{page}.md").read_text()
        ids = re.findall(r'<a id="([^"]+)"></a>', text)
        assert len(ids) == len(set(ids)), f"{page}.md repeats an anchor"
    methods = (ROOT / "docs" / "methods.md").read_text()
    papers = methods.split('<a id="papers"></a>')[1]
    # each paper entry carries an arXiv id, except the Anthropic update, which has none
    entries = re.findall(r'- <a id="(p-[a-z]+)"></a>(.*?)(?=\n- |\Z)', papers, re.S)
    assert len(entries) >= 14
    for name, entry in entries:
        assert re.search(r"arXiv:\d{4}\.\d{5}", entry) or name == "p-anthropic", name
