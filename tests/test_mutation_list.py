"""scripts/mutations.toml stays usable as the code changes: every deliberate bug's text is found
exactly once in its file, and every test it names exists, so `scripts/mutate.py` can run them all
(it refuses the whole list otherwise). Whether each is caught is mutate.py's job, not this test's."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_mutation_applies_exactly_once_and_names_existing_tests():
    mutations = tomllib.loads((ROOT / "scripts" / "mutations.toml").read_text())["mutation"]
    problems = []
    ids = [m["id"] for m in mutations]
    problems += [f"duplicate id {i}" for i in sorted(set(ids)) if ids.count(i) > 1]
    for m in mutations:
        found = (ROOT / m["file"]).read_text().count(m["find"]) if (ROOT / m["file"]).exists() else -1
        if found != 1:
            problems.append(f"{m['id']}: its text occurs {found} times in {m['file']}")
        for test in m["tests"]:
            path, _, name = test.partition("::")
            if not (ROOT / path).exists() or (name and f"def {name.split('[')[0]}(" not in (ROOT / path).read_text()):
                problems.append(f"{m['id']}: no test {test}")
    assert not problems, "\n".join(problems)
