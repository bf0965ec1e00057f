"""The documentation stays true: every file path, module name and setting that README.md
and docs/*.md name exists in the tree, in the code or in the settings; every environment
variable the code reads has its row in docs/configuration.md; the site's navigation lists
every page; and no code or documentation cites the tracker by number: history belongs
in CHANGELOG.md. In-process, no database."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys

import pytest
import yaml

from tests.conftest import ROOT

DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [ROOT / "README.md", *DOCS]
CONFIGURATION = ROOT / "docs" / "configuration.md"

# The tree's top level: a backticked path starting with one of these must exist.
TOP = {p.name for p in ROOT.iterdir() if not p.name.startswith(".") or p.name in (".ci", ".importlinter",
                                                                                    ".coveragerc", ".gitignore")}
TOP -= {".venv", "var", "site", "mutants", ".git"}
# Made at run time (git-ignored), named in the docs as what a reader will find there.
RUNTIME = ("var/", "tests/artifacts/", "bench/results/", "locale/zh_Hans/LC_MESSAGES/django.mo", "site/")
PACKAGES = ("jobs", "news", "wechat", "analytics", "nextevent", "devtools", "bench", "tests")

CODE_SPAN = re.compile(r"`([^`\n]+)`")
PATH = re.compile(r"^\.?[\w.-]+(/[\w.*-]+)*/?$")
DOTTED = re.compile(r"^(%s)(\.\w+)+$" % "|".join(PACKAGES))
VARIABLE = re.compile(r"^[A-Z][A-Z0-9]*(_[A-Z0-9]+)+$")
ENV_READ = re.compile(r"""env\.(?:str|int|float|bool|list)\(\s*f?["']([A-Z][A-Z0-9_]*(?:\{)?)"""
                      r"""|(?:os\.environ|environ|os)\.(?:get|getenv)\(\s*f?["']([A-Z][A-Z0-9_]*(?:\{)?)"""
                      r"""|os\.getenv\(\s*f?["']([A-Z][A-Z0-9_]*(?:\{)?)"""
                      r"""|_(?:int|str|bool)\(\s*["']([A-Z][A-Z0-9_]*)["']""")
# The application's settings: the settings module, its helpers, the apps, the deploy files.
# What the scripts and the tests read (COVERAGE_FLOOR, TEST_TIME_SLACK, ...) is documented on
# the Testing page, not in the configuration table.
APP_SOURCES = ["nextevent/*.py", "jobs/**/*.py", "wechat/**/*.py", "analytics/**/*.py", "news/**/*.py",
               "deploy/*.py"]
ALL_SOURCES = [*APP_SOURCES, "devtools/**/*.py", "deploy/systemd/*", "scripts/*", "tests/conftest.py",
               "tests/testenv.py", "tests/hypothesis_profiles.py", "bench/*.py", ".ci/run"]
# Families of our variables: a name of these in a page must be read somewhere.
OURS = re.compile(r"^(DB|REDIS|JOBS|WECHAT|ANALYTICS|METRICS|READYZ|ALERT|DJANGO|GUNICORN|QCLUSTER|NEXTEVENT|"
                  r"LOG|TEST|COVERAGE|STATIC|DATA|LANGUAGE|TIME|Q_CLUSTER|HYPOTHESIS)_")
PERMISSION = re.compile(r"^(\w+)\.(view|add|change|delete)_(\w+)$")
FILE_SUFFIX = re.compile(r"\.(py|md|html|conf|example|cfg|ini|txt|yml|service|json|sh|po|mo|jpg)$")


def spans(path):
    """(line number, backticked text) outside fenced code blocks."""
    fenced = False
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            for match in CODE_SPAN.finditer(line):
                yield number, match.group(1).strip()


def source_text(patterns=ALL_SOURCES) -> str:
    files = {f for pattern in patterns for f in ROOT.glob(pattern) if f.is_file()}
    return "\n".join(f.read_text(errors="replace") for f in sorted(files))


def variables_read_by_code() -> set[str]:
    """Environment variables the application reads (an f-string name as its prefix + "*")."""
    names = set()
    for match in ENV_READ.finditer(source_text(APP_SOURCES)):
        name = next(g for g in match.groups() if g)
        names.add(name[:-1] + "*" if name.endswith("{") else name)
    return names


def named_anywhere() -> set[str]:
    """Every quoted UPPER_CASE name and every ${NAME} in the code, scripts and deploy files."""
    text = source_text()
    return (set(re.findall(r"""["']([A-Z][A-Z0-9_]+)["']""", text)) | set(re.findall(r"\$\{?([A-Z][A-Z0-9_]+)", text))
            | {n + "*" for n in re.findall(r"""f["']([A-Z][A-Z0-9_]+_)\{""", text)}
            | set(re.findall(r"^([A-Z][A-Z0-9_]+)=", text, re.M)))


def is_read(name: str, read: set[str]) -> bool:
    return name in read or any(r.endswith("*") and name.startswith(r[:-1]) for r in read)


def configuration_rows() -> list[str]:
    """The first cell of every row of the configuration tables: one variable each."""
    rows = []
    for line in CONFIGURATION.read_text().splitlines():
        match = re.match(r"^\| `([A-Z][A-Z0-9_]+)` \|", line)
        if match:
            rows.append(match.group(1))
    return rows


def test_every_file_path_a_page_names_exists():
    missing = []
    for page in PAGES:
        for number, text in spans(page):
            candidate = text.split("::")[0].split(" ")[0].rstrip(".,:;")
            if not PATH.match(candidate) or candidate.split("/")[0] not in TOP:
                continue
            if "/" not in candidate and "." not in candidate:
                continue  # a bare word (`jobs`, `news`): an app name, not a path
            if candidate.startswith(RUNTIME):
                continue
            found = list(ROOT.glob(candidate)) if "*" in candidate else [ROOT / candidate]
            if not any(p.exists() for p in found):
                missing.append(f"{page.relative_to(ROOT)}:{number}: {candidate}")
    assert missing == []


def resolves(dotted: str) -> bool:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return False
        return True
    return False


def has_permission(app: str, action: str, model: str) -> bool:
    from django.apps import apps

    try:
        meta = apps.get_model(app, model)._meta
    except LookupError:
        return False
    return action in meta.default_permissions


def declared_permission(name: str) -> bool:
    """app_label.codename of a permission a model declares itself (Meta.permissions)."""
    from django.apps import apps

    app, _, codename = name.partition(".")
    try:
        models = apps.get_app_config(app).get_models()
    except LookupError:
        return False
    return any(codename == code for model in models for code, _ in model._meta.permissions)


def test_every_module_and_name_a_page_names_imports():
    missing = []
    for page in PAGES:
        for number, text in spans(page):
            candidate = re.split(r"[(\s\[]", text)[0]
            if FILE_SUFFIX.search(candidate) or not DOTTED.match(candidate):
                continue
            permission = PERMISSION.match(candidate)
            if permission:
                if not has_permission(*permission.groups()):
                    missing.append(f"{page.relative_to(ROOT)}:{number}: {candidate}")
            elif not resolves(candidate) and not declared_permission(candidate):
                missing.append(f"{page.relative_to(ROOT)}:{number}: {candidate}")
    assert missing == []


def test_every_variable_a_page_names_is_read_by_the_code_or_is_a_django_setting():
    from django.conf import settings

    read = named_anywhere()
    missing = set()
    for page in PAGES:
        for number, text in spans(page):
            for name in re.findall(r"\b[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+\b", text.split("=")[0]):
                ours = OURS.match(name) or page == CONFIGURATION
                if ours and not is_read(name, read) and not hasattr(settings, name):
                    missing.add(f"{page.relative_to(ROOT)}:{number}: {name}")
    assert sorted(missing) == []


def test_every_variable_the_code_reads_has_its_row_in_the_configuration_page():
    rows = set(configuration_rows())
    undocumented = sorted(name for name in variables_read_by_code()
                          if not (name in rows or (name.endswith("*") and any(r.startswith(name[:-1]) for r in rows))))
    assert undocumented == []


def test_the_configuration_page_has_one_row_per_variable():
    rows = configuration_rows()
    assert len(rows) > 100
    assert sorted(name for name in set(rows) if rows.count(name) > 1) == []
    assert not re.search(r"^\| `[A-Z_]+` / `", CONFIGURATION.read_text(), re.M), "one variable per row"


def test_the_site_lists_every_page_and_the_readme_stays_short():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())

    def listed(nav):
        for item in nav:
            for value in (item.values() if isinstance(item, dict) else [item]):
                yield from (listed(value) if isinstance(value, list) else [value])

    assert sorted(listed(config["nav"])) == sorted(p.name for p in DOCS)
    assert len((ROOT / "README.md").read_text().splitlines()) <= 300


TRACKER = re.compile(r"(?<![\w/-])issues?\s+\d+", re.I)


@pytest.mark.parametrize("kind", ["docs", "code"])
def test_nothing_but_the_changelog_cites_the_tracker(kind):
    tracked = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.split()
    texts = [f for f in tracked if not f.endswith((".png", ".jpg", ".mo")) and f != "CHANGELOG.md"
             and (ROOT / f).is_file()]
    chosen = [f for f in texts if (f.endswith(".md")) == (kind == "docs")]
    cited = [f"{f}:{n}: {line.strip()[:100]}" for f in chosen
             for n, line in enumerate((ROOT / f).read_text(errors="replace").splitlines(), 1) if TRACKER.search(line)]
    assert cited == []


CODE_PATH = re.compile(r"(?<![\w./-])((?:%s)/[\w/.-]*\w\.(?:py|html|conf|service|example|sh|md|txt|json|po))\b"
                       % "|".join(["jobs", "news", "wechat", "analytics", "nextevent", "devtools", "deploy", "scripts",
                                   "tests", "bench", "templates", "docs", "locale"]))


def test_every_file_path_the_code_names_exists():
    """Docstrings and comments name files as a reader will look for them (a module that became
    a package, or went away, is corrected where it is cited)."""
    tracked = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.py", "*.html",
                              "scripts/*", ".ci/run", "*.cfg", ".importlinter"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.split()
    missing = []
    for name in tracked:
        path = ROOT / name
        if not path.is_file():
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            for cited in CODE_PATH.findall(line):
                if not cited.startswith(RUNTIME) and not (ROOT / cited).exists() and "*" not in cited:
                    missing.append(f"{name}:{number}: {cited}")
    assert missing == []


def test_the_site_builds_strictly(tmp_path):
    # What CI runs (.ci/run): a broken link or anchor, or a page outside the nav, fails.
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                             str(tmp_path / "site")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
