"""The docs say what the code does: their links resolve, the configuration page says who reads each
setting, and the README's first real run and the usage page's Python example run as written, in order,
against a real Redis, worker and the offline server (the `local` group of tests/conftest.py)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest

from contract.settings import Settings
from producer.output import CSV_FIELDS
from scripts.stack import BIN
from tests.conftest import Group

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = ROOT / "README.md"
PAGES = [README, *sorted(DOCS.glob("*.md"))]

#: `[text](target)`, not an image; the target without a title
_LINK = re.compile(r"(?<!!)\[[^\]\n]*\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def _prose(text: str) -> str:
    """The page without its fenced code and inline code: links there are examples, not links."""
    text = _FENCE.sub("", text)
    return re.sub(r"`[^`\n]*`", "", text)


def _slug(heading: str) -> str:
    """The anchor of a heading as Python-Markdown's toc (mkdocs) and GitHub both make it for our headings."""
    text = re.sub(r"[`*_]", "", heading)
    text = unicodedata.normalize("NFKD", text)
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[\s]+", "-", text)


def _anchors(page: Path) -> set[str]:
    body = _FENCE.sub("", page.read_text(encoding="utf-8"))
    return {_slug(h) for h in re.findall(r"^#{1,6} (.+)$", body, re.MULTILINE)}


def _section(text: str, heading: str) -> str:
    start = text.index(f"\n{heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else len(text)]


def _blocks(section: str, lang: str) -> list[str]:
    return [body for kind, body in _FENCE.findall(section) if kind == lang]


def test_every_relative_link_resolves() -> None:
    broken: list[str] = []
    checked = 0
    for page in PAGES:
        for target in _LINK.findall(_prose(page.read_text(encoding="utf-8"))):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            checked += 1
            if not dest.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no heading #{anchor} in {dest.name})")
    assert checked > 30, f"only {checked} relative links found: is the link pattern still right?"
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_readme_links_every_docs_page_and_mkdocs_builds_them_all() -> None:
    readme = README.read_text(encoding="utf-8")
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    for page in sorted(DOCS.glob("*.md")):
        assert f"]({page.name})" in (DOCS / "index.md").read_text(encoding="utf-8") or page.name == "index.md"
        assert page.name == "index.md" or f"](docs/{page.name})" in readme, f"README never links {page.name}"
        assert f": {page.name}\n" in nav, f"mkdocs.yml's nav leaves out {page.name}"
    assert len(readme.splitlines()) <= 200, "the README is the front page: keep it short, move reference to docs/"


def test_mkdocs_builds_strictly(tmp_path: Path) -> None:
    mkdocs = BIN / "mkdocs"
    if not mkdocs.exists():
        pytest.skip("mkdocs is not installed in the venv (it is in the dev extra)")
    built = subprocess.run(
        [str(mkdocs), "build", "--strict", "--quiet", "-d", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert built.returncode == 0, built.stderr
    assert (tmp_path / "site" / "configuration" / "index.html").is_file()


def test_configuration_table_says_which_process_reads_each_setting() -> None:
    rows = re.findall(r"^\| (`[A-Z_]+`(?:, `[A-Z_]+`)*) \|[^|]*\| ([^|]+) \|", _config(), re.MULTILINE)
    read_by = {v: who.strip() for names, who in rows for v in re.findall(r"`([A-Z_]+)`", names)}
    assert set(Settings.variables()) <= set(read_by)
    known = ("submit", "worker", "all", "`summarize llm-serve`", "Flower", "`purge`", "`retry`")
    for var, who in read_by.items():
        assert who.startswith(known), f"{var}: read by {who!r}"
    # What a batch's spec takes from the environment is read at submit, never by the workers.
    for var in ("SUMMARIZE_MODEL", "SUMMARIZE_MAX_WORDS", "SUMMARIZE_PRICES", "SUMMARIZE_RESULT_TTL"):
        assert read_by[var].startswith("submit") and "worker" not in read_by[var], var
    assert "not submit" in read_by["SUMMARIZE_CACHE_TTL"]


def _config() -> str:
    return (DOCS / "configuration.md").read_text(encoding="utf-8")


def test_documented_csv_columns_are_the_writers() -> None:
    usage = (DOCS / "usage.md").read_text(encoding="utf-8")
    sentence = usage[usage.index("CSV has these columns, in this order:") :].split("then a JSON answer", 1)[0]
    assert re.findall(r"`([a-z_]+)`", sentence) == CSV_FIELDS


def _first_run(group: Group) -> tuple[str, list[str]]:
    """The README's first real run as one script, with the stack's values for what it exports, and the
    lines left out because the fixture does them (its worker runs with the same environment)."""
    section = _section(README.read_text(encoding="utf-8"), "## A first real run with your own endpoint")
    lines = [ln for block in _blocks(section, "sh") for ln in block.splitlines() if ln.strip()]
    run, left_out = [], []
    for ln in lines:
        exported = re.match(r"export (\w+)=", ln)
        if exported:
            assert exported.group(1) in group.env, f"the first run exports {exported.group(1)}, which the test can't"
            left_out.append(ln)
        elif ln.startswith("celery -A worker worker"):
            assert " -l info" in ln, "the worker's ready line needs -l info"
            left_out.append(ln)
        else:
            run.append(ln)
    return "set -euo pipefail\n" + "\n".join(run) + "\n", left_out


def _workdir(tmp_path: Path) -> Path:
    work = tmp_path / "checkout"
    work.mkdir()
    shutil.copytree(ROOT / "samples", work / "samples")
    return work


def test_readme_first_real_run_runs_as_written(tmp_path: Path, local: Group) -> None:
    script, left_out = _first_run(local)
    assert [ln.split("=")[0] for ln in left_out if ln.startswith("export")] == [
        "export REDIS_URL",
        "export OPENAI_BASE_URL",
        "export OPENAI_API_KEY",
        "export SUMMARIZE_MODEL",
    ]
    work = _workdir(tmp_path)
    env = {**local.env, "PATH": f"{BIN}:/usr/bin:/bin"}
    done = subprocess.run(["bash", "-c", script], cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, (done.stdout, done.stderr)
    rows = [json.loads(line) for line in (work / "summaries.jsonl").read_text(encoding="utf-8").splitlines()]
    ids = [json.loads(line)["id"] for line in (work / "samples" / "articles.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ids
    assert all(r["status"] == "done" and r["summary"] for r in rows), rows
    header = (work / "summaries.csv").read_text(encoding="utf-8").splitlines()[0]
    assert header.split(",") == CSV_FIELDS
    # `head -c 400 summaries.jsonl` showed the first row
    assert '{"id":"' + ids[0] in done.stdout


def test_usage_python_example_runs_as_written(tmp_path: Path, local: Group) -> None:
    usage = (DOCS / "usage.md").read_text(encoding="utf-8")
    (example,) = _blocks(_section(usage, "## From Python"), "python")
    work = _workdir(tmp_path)
    (work / "example.py").write_text(example, encoding="utf-8")
    env = {**local.env, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "example.py"], cwd=work, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout.splitlines()
    assert out[0].startswith("a1 ") and "None" not in out[0], out
    assert out[-1].endswith(" 12 done"), out


def test_invalid_records_are_kept_as_documented(tmp_path: Path, local: Group) -> None:
    work = _workdir(tmp_path)
    (work / "bad.jsonl").write_text('{"id": "ok", "text": "A short article."}\n{"id": "x", "text": ""}\n')
    sub = subprocess.run(
        [str(BIN / "summarize"), "submit", "bad.jsonl", "--skip-invalid", "--wait", "-q"],
        cwd=work,
        env=local.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert sub.returncode == 1, sub.stderr  # one failed job: the invalid record
    rows = local.results_by_id(sub.stdout.strip().splitlines()[-1])
    assert set(rows) == {"ok", "invalid@bad.jsonl:2"}
    bad = rows["invalid@bad.jsonl:2"]
    assert bad["status"] == "failed" and bad["error_type"] == "InputError" and "empty" in bad["error"], bad
    assert "bad.jsonl:2 (id 'x'): " in sub.stderr


def test_the_architecture_page_names_every_module() -> None:
    """docs/architecture.md is where a newcomer learns what each module is for: a new module must be on it."""
    page = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    modules = [p for pkg in ("contract", "worker", "producer", "localllm") for p in sorted((ROOT / pkg).rglob("*.py"))]
    missing = [str(p.relative_to(ROOT)) for p in modules if f"`{p.name}`" not in page and p.name not in page]
    assert len(modules) > 40
    assert not missing, f"docs/architecture.md does not name {missing}"
