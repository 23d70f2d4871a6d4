"""patches/ is what scripts/make_patches.py generates from the sources now."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_patches_are_generated_from_the_current_sources(tmp_path):
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "make_patches.py"), str(tmp_path)], check=True
    )
    generated = {p.name: p.read_text() for p in tmp_path.glob("*.patch")}
    committed = {p.name: p.read_text() for p in (ROOT / "patches").glob("*.patch")}
    assert generated, "the generator wrote no patches"
    stale = sorted(n for n in generated.keys() | committed.keys() if generated.get(n) != committed.get(n))
    assert not stale, f"patches/ is stale: {stale}; run python scripts/make_patches.py"


def test_patches_add_only_this_projects_lines():
    # Zero-context insertions and whole new files: no line of MLX's own source is
    # carried (no context lines; a removal only takes out a line an earlier
    # patch of the series added to that file).
    added = {}  # MLX path -> lines earlier patches added
    for patch in sorted((ROOT / "patches").glob("*.patch")):
        for diff in patch.read_text().split("\ndiff --git ")[1:]:
            path = diff.split(" ", 1)[0][len("a/") :]
            ours = added.setdefault(path, [])
            for line in diff.splitlines()[1:]:
                if line.startswith(("--- ", "+++ ")):
                    continue
                assert not line.startswith(" "), (patch.name, line)
                if line.startswith("-"):
                    assert line[1:] in ours, (patch.name, path, line)
                    ours.remove(line[1:])
                elif line.startswith("+"):
                    ours.append(line[1:])
