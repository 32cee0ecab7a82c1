"""The plausible-bug table (tests/mutations.py) follows the code: every entry's text is in its file exactly once."""

import glob
import os

import pytest

from mutations import MUTATIONS, ROOT, missing_texts


@pytest.mark.parametrize("mutation", MUTATIONS, ids=lambda m: m.name)
def test_every_planted_bug_still_has_its_text(mutation):
    assert not missing_texts(mutation), (mutation.path, missing_texts(mutation))


def test_entries_have_distinct_names_and_name_their_tests():
    assert len({m.name for m in MUTATIONS}) == len(MUTATIONS)
    assert all(m.tests and m.tests[0].startswith("tests/") for m in MUTATIONS)


def test_docs_name_every_test_module_and_the_entries_it_catches():
    """docs/tests.md's module table has a row per tests/test_*.py, and each entry is named in the row of every module
    its tests are in (so the table says which module catches what)."""
    rows = {}
    with open(os.path.join(ROOT, "docs", "tests.md")) as f:
        for line in f:
            if line.startswith("| `tests/test_"):
                rows[line.split("`")[1]] = line.rsplit("|", 2)[1]
    modules = {os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "tests", "test_*.py"))}
    assert set(rows) == modules
    for m in MUTATIONS:
        for module in {t.split("::")[0] for t in m.tests if t.startswith("tests/")}:
            assert m.name in rows[module].replace(",", " ").split(), (m.name, module)


@pytest.mark.slow
def test_every_plausible_bug_is_caught():
    """`python -m tests.mutations`: each entry, planted in a temporary copy, fails its tests (which pass unchanged)."""
    from mutations import main

    assert main([]) == 0
