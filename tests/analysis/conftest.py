"""Stores the analysis tests share: written once per session (a store write is the slow part of
these tests), copied by each test that writes into its folder."""
from __future__ import annotations

import shutil

import pytest

from synthetic_results import suite_items, suite_models, write_store


@pytest.fixture(scope="session")
def pronoun_suite_store(tmp_path_factory):
    """synthetic_results' five-model pronoun_gender suite with sizes. Read-only: copy it
    (`copy_store`) before anything writes into the folder."""
    return write_store(tmp_path_factory.mktemp("pronoun-suite") / "res", suite_items(rules=("pronoun_gender",)),
                       models=suite_models())


@pytest.fixture
def copy_store(tmp_path):
    """copy_store(src) -> a fresh copy of the store `src` under this test's tmp_path (file times kept)."""
    def copy(src, name: str = "res"):
        return shutil.copytree(src, tmp_path / name)

    return copy
