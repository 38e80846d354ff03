"""The nevergrad strategy: the search contract suite, and what nevergrad adds (optimizer
names, the space mapping, failed trials, state replayed on restore)."""

from __future__ import annotations

import pytest

from mlrig.plugins.search_nevergrad import NevergradSearch
from mlrig.testing.search import SearchStrategyContract


def nevergrad_search(**options: object) -> NevergradSearch:
    return NevergradSearch.from_options(dict(options), where="search.nevergrad")


class TestNevergradContract(SearchStrategyContract):
    deterministic = True

    @pytest.fixture
    def strategy_factory(self):
        return nevergrad_search
