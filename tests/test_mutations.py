"""The plausible-bug table (tests/mutations.py) follows the code: every entry's text is in its file exactly once."""

import pytest

from mutations import MUTATIONS, missing_texts


@pytest.mark.parametrize("mutation", MUTATIONS, ids=lambda m: m.name)
def test_every_planted_bug_still_has_its_text(mutation):
    assert not missing_texts(mutation), (mutation.path, missing_texts(mutation))


def test_entries_have_distinct_names_and_name_their_tests():
    assert len({m.name for m in MUTATIONS}) == len(MUTATIONS)
    assert all(m.tests and m.tests[0].startswith("tests/") for m in MUTATIONS)


@pytest.mark.slow
def test_every_plausible_bug_is_caught():
    """`python -m tests.mutations`: each entry, planted in a temporary copy, fails its tests (which pass unchanged)."""
    from mutations import main

    assert main([]) == 0
