"""Write the README's Results section: results/intro.md (the protocol and what the tables show), then the tables of
a comparison report.

    smallvit compare runs/sweeps/legacy-20ep --output results/legacy-20ep
    python results/readme_section.py results/legacy-20ep/report.md [INTRO.md]

The report's title lines are dropped, its headings move one level down, and its image links are rewritten relative
to the README. Without arguments it uses results/RESULTS.md (the tables the former results/run.py wrote, which has
the same layout) and results/intro.md.
"""

import os
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
README = HERE.parent / "README.md"
START, END = "<!-- results:start -->", "<!-- results:end -->"


def block(tables: Path, intro: Path) -> str:
    """The section between the markers: the intro, then the tables without their first three lines."""
    body = tables.read_text().split("\n", 3)[3].replace("\n## ", "\n### ")

    def relink(match: re.Match) -> str:
        target = Path(os.path.relpath(tables.resolve().parent / match.group(2), README.parent)).as_posix()
        return f"{match.group(1)}{target})"

    body = re.sub(r"(!\[[^\]]*\]\()([^)\s:]+)\)", relink, body)
    return f"{START}\n{intro.read_text()}\n{body.strip()}\n{END}"


def main(argv: list[str]) -> None:
    tables = Path(argv[0]) if argv else HERE / "RESULTS.md"
    intro = Path(argv[1]) if len(argv) > 1 else HERE / "intro.md"
    text = README.read_text()
    section = block(tables, intro)
    if START in text:
        text = text[: text.index(START)] + section + text[text.index(END) + len(END) :]
    else:
        text = text.replace("RESULTS_SECTION", section)
    README.write_text(text)


if __name__ == "__main__":
    main(sys.argv[1:])
