"""Property: any number, or anything else, given to any numeric flag of main.py or the runner
parses to a finite value or ends in one line naming the flag, exit 2 (see test_numeric_flags.py)."""

import pytest

hypothesis = pytest.importorskip("hypothesis", reason="hypothesis is in the dev dependencies: uv sync")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from test_numeric_flags import CASES, EDGES, NON_FINITE, check  # noqa: E402


@settings(max_examples=300, deadline=None)
@given(case=st.sampled_from(CASES),
       value=st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr),
                       st.integers(-(10**40), 10**40).map(str),
                       st.sampled_from(NON_FINITE + EDGES),
                       st.text(max_size=8)))
def test_any_value_for_any_numeric_flag_parses_or_is_refused_in_one_line(case, value):
    check(*case, value)
