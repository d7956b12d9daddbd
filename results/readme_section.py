"""Write the README's Results section: results/intro.md (the protocol and what the tables show), then the tables
of results/RESULTS.md. Run after `python results/run.py collect`."""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
README = HERE.parent / "README.md"
START, END = "<!-- results:start -->", "<!-- results:end -->"

intro = Path(sys.argv[1] if len(sys.argv) > 1 else HERE / "intro.md").read_text()
tables = (HERE / "RESULTS.md").read_text().split("\n", 3)[3].replace("\n## ", "\n### ")
text = README.read_text()
block = f"{START}\n{intro}\n{tables.strip()}\n{END}"
if START in text:
    text = text[: text.index(START)] + block + text[text.index(END) + len(END) :]
else:
    text = text.replace("RESULTS_SECTION", block)
README.write_text(text)
