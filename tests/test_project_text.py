"""The project's own text: a README a newcomer reads in five minutes, and words about the project, not about how it
was made, in everything the repository ships."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README_MAX_LINES = 250
SHIPPED = ["src", "tests", "docs", "results", "benchmarks", "README.md"]
SKIPPED_PARTS = {"__pycache__", ".pytest_cache"}

# Each word is written in two pieces, so that this file does not match itself.
PROCESS_WORDS = re.compile(
    "iss" + "ue [0-9]+|" + r"\bsitt" + r"ings?\b|" + r"\bsess" + r"ions?\b|" + "the bri" + "ef|" + r"\ble" + r"nt\b",
    re.IGNORECASE,
)


def shipped_text_files() -> list[Path]:
    """Every text file under :data:`SHIPPED` (binary files and generated metadata left out)."""
    paths = []
    for name in SHIPPED:
        root = ROOT / name
        found = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        paths += [p for p in found if not SKIPPED_PARTS & set(p.parts) and not p.parent.name.endswith(".egg-info")]
    return paths


def read_text(path: Path) -> str | None:
    """The file's text, or None for a binary file."""
    data = path.read_bytes()
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def process_word_hits(paths: list[Path]) -> list[str]:
    """``path:line: word`` for every process word in ``paths``."""
    hits = []
    for path in paths:
        text = read_text(path)
        for number, line in enumerate((text or "").splitlines(), 1):
            hits += [f"{path.relative_to(ROOT)}:{number}: {m.group(0)}" for m in PROCESS_WORDS.finditer(line)]
    return hits


def test_the_readme_is_short():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move detail to docs/"


def test_the_pattern_finds_each_process_word_and_spares_ordinary_words():
    pieces = [("see Iss", "ue 10"), ("one sitt", "ing"), ("sitt", "ings"), ("a sess", "ion"), ("Sess", "ions")]
    for text in [a + b for a, b in [*pieces, ("The Bri", "ef"), ("GPU le", "nt")]]:
        assert PROCESS_WORDS.search(text), text
    for text in ["issues", "issue tracker", "lentil", "relentless", "excellent", "brief note", "sitter", "obsession"]:
        assert not PROCESS_WORDS.search(text), text


def test_no_process_words_in_what_the_repository_ships():
    paths = shipped_text_files()
    assert ROOT / "README.md" in paths and any(p.suffix == ".py" for p in paths)
    assert process_word_hits(paths) == []
