"""The docs hold: their Python runs, their figures exist, and they cite only files a clone has.

A citation is a repository path in the README, a docs page, `benchmarks/RESULTS.md`, a
config, `launch/`, the notebook or the package: a markdown link target (resolved from the
citing file), or a path that starts at a top-level folder (`docs/`, `tests/`, `lasad_jax/`,
...) or at a subpackage of `lasad_jax` (`ops/chunked.py`), anywhere in the text. The design
notes the project started from are not in the repository, so citing `DESIGN.md` is an error
too.
"""

from __future__ import annotations

import pathlib
import re
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
TOP = ("lasad_jax", "benchmarks", "docs", "tests", "configs", "launch", "notebooks", ".ci")
SUBPACKAGES = tuple(p.name for p in (ROOT / "lasad_jax").iterdir()
                    if p.is_dir() and (p / "__init__.py").exists())
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _cited_files() -> list[pathlib.Path]:
    files = [*PAGES, ROOT / "benchmarks" / "RESULTS.md"]
    files += sorted((ROOT / "configs").glob("*.py")) + sorted((ROOT / "configs").glob("*.md"))
    files += sorted(p for p in (ROOT / "launch").rglob("*") if p.is_file())
    files += sorted((ROOT / "lasad_jax").rglob("*.py"))
    files += sorted((ROOT / "notebooks").glob("*.ipynb"))
    return files


_LINK = re.compile(r"\]\(([^)\s]+)\)")
_IMAGE = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")
# A path that starts at a top-level folder or a subpackage, not inside a URL or `../x`.
_PATH = re.compile(
    r"(?<![\w./:-])((?:%s)/[\w.*/<>{}-]*[\w*/])" % "|".join(re.escape(t) for t in TOP + SUBPACKAGES)
)
_DESIGN = re.compile(r"DESIGN(?:\.md|\s*§)")
# A README section cited by name: `README "Scaling out"`, `"Evaluation" in the top-level README`.
_SECTION = re.compile(
    r"README[,:]?\s*\(?[\"'“]([^\"'”\n]{3,60})[\"'”]"
    r"|[\"'“]([^\"'”\n]{3,60})[\"'”] in the (?:top-level )?README"
)


def _readme_headings() -> set[str]:
    text = (ROOT / "README.md").read_text()
    return {h.strip().lower() for h in re.findall(r"^#+ (.+)$", text, re.M)}


def _exists(path: str, bases: list[pathlib.Path]) -> bool:
    path = re.sub(r":\d[\d,-]*$", "", path.split("#")[0]).rstrip(".")
    if any(mark in path for mark in ("<", "{", "...", "ORG/")):
        return True  # a placeholder (`checkpoints/<step>/`), not a file name
    for base in bases:
        if "*" in path:
            if any(base.glob(path.rstrip("/"))):
                return True
        elif (base / path).exists():
            return True
    return False


def _missing_citations(file: pathlib.Path) -> list[str]:
    text = file.read_text()
    rel = file.relative_to(ROOT)
    found = []
    for m in _DESIGN.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        found.append(f"{rel}:{line}: cites {m.group(0)!r}, which a clone does not have")
    headings = _readme_headings()
    for m in _SECTION.finditer(text):
        name = m.group(1) or m.group(2)
        if name.strip().lower() not in headings:
            line = text.count("\n", 0, m.start()) + 1
            found.append(f"{rel}:{line}: cites README section {name!r}, which it does not have")
    for m in _LINK.finditer(text) if file.suffix == ".md" else ():
        target = m.group(1)
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue  # a URL or an anchor in the same page
        if not _exists(target, [file.parent]):
            line = text.count("\n", 0, m.start()) + 1
            found.append(f"{rel}:{line}: link to missing {target}")
    for m in _PATH.finditer(text):
        if text[max(m.start() - 2, 0):m.start()] == "](" or (
                text[m.start() - 1] == "[" and text[m.end():m.end() + 2] == "]("):
            continue  # a link's target or text: the link is checked above
        path = m.group(1)
        bases = [ROOT, file.parent]
        if path.split("/")[0] in SUBPACKAGES:
            bases.append(ROOT / "lasad_jax")
        if not _exists(path, bases):
            line = text.count("\n", 0, m.start()) + 1
            found.append(f"{rel}:{line}: cites missing {path}")
    return found


def test_docs_cite_only_files_in_the_repository():
    missing = [entry for f in _cited_files() for entry in _missing_citations(f)]
    assert not missing, "citations of files a clone does not have:\n" + "\n".join(missing)


def test_the_citation_check_can_fail(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "here.md").write_text("x")
    page = tmp_path / "docs" / "page.md"
    page.write_text("See DESIGN.md §1, [ok](here.md), [gone](gone.md), `tests/nope.py`,\n"
                    "`docs/here.md`, `ops/missing.py`, https://x.org/lasad_jax/blob/a.py,\n"
                    "`checkpoints/<step>/` and `docs/*.md`;\n"
                    "README \"Old section\", README \"Top\".\n")
    (tmp_path / "README.md").write_text("# Top\n")
    found = _missing_citations(page)
    assert [f.split(": ", 1)[1] for f in found] == [
        "cites 'DESIGN.md', which a clone does not have",
        "cites README section 'Old section', which it does not have",
        "link to missing gone.md",
        "cites missing tests/nope.py",
        "cites missing ops/missing.py",
    ]


def test_every_page_is_linked_and_its_images_exist():
    readme = (ROOT / "README.md").read_text()
    for page in PAGES[1:]:
        assert f"(docs/{page.name})" in readme, f"README does not link docs/{page.name}"
    for page in PAGES:
        for target in _IMAGE.findall(page.read_text()):
            assert (page.parent / target).is_file(), f"{page.name}: no image {target}"


def test_readme_stays_short_and_keeps_the_commands():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 260, "the README is the front page; details go to docs/"
    ci = (ROOT / ".ci" / "run").read_text()
    assert "python -m pytest -q\n" in ci
    # CI runs the README's full test command, and the README names the inner loop.
    assert re.search(r"^python -m pytest -q +(#.*)?$", text, re.M), "README lost its test command"
    for command in ("python -m lasad_jax.main --config=configs/demo.py --workdir=/tmp/demo",
                    'python -m pytest -q -m "not slow"'):
        assert command in text, f"README lost {command!r}"


@pytest.mark.slow  # each page's examples compile a model or a decoding loop: 5-15 s
@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_python_examples_run(page):
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), re.S)
    for block in blocks:
        namespace: dict = {}
        exec(compile(block, str(page.relative_to(ROOT)), "exec"), namespace)
        if "outs" in namespace and "o" in namespace:
            # The operator example compares decoding with the parallel form.
            err = np.abs(np.stack(namespace["outs"], 1) - np.asarray(namespace["o"])).max()
            assert err < 1e-4


def test_readme_has_the_operator_example():
    text = (ROOT / "README.md").read_text()
    assert "```python" in text and "lasad_decode_step" in text, "README lost its runnable example"


def test_decay_figure_is_the_operators_mask(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import decay_figure
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    weights = decay_figure.draw(tmp_path / "decay.png", decay=0.9, width=16, query=(8, 8))
    assert (tmp_path / "decay.png").stat().st_size > 10_000
    lasad, raster = weights["lasad"], weights["linear_1d"]
    # Independent reading of the two rules: 2D grid distance against raster distance.
    r, c = np.meshgrid(np.arange(16), np.arange(16), indexing="ij")
    causal = r * 16 + c <= 8 * 16 + 8
    want_2d = np.where(causal, 0.9 ** (8 - r) * 0.9 ** np.abs(8 - c), np.nan)
    want_1d = np.where(causal, 0.9 ** (8 * 16 + 8 - (r * 16 + c)), np.nan)
    np.testing.assert_allclose(lasad, want_2d, rtol=1e-5)
    np.testing.assert_allclose(raster, want_1d, rtol=1e-5)
    # The point of the picture: in raster order the token above fades below the far end
    # of the previous row; on the grid it does not.
    assert raster[7, 8] < raster[7, 15] and lasad[7, 8] > lasad[7, 15]
