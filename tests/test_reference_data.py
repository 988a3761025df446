"""Tests that compare with the original LLaVA need ../shared/reference: without it they skip, except in CI
(`CI=true`), where a run that skipped every comparison must not pass."""

import pytest

import conftest


@pytest.fixture
def missing_reference(tmp_path, monkeypatch):
    monkeypatch.setattr(conftest, "REFERENCE", tmp_path / "absent")


def test_missing_reference_data_fails_in_ci(missing_reference, monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"reference data not available: .*absent.*CI=true"):
        conftest.reference_path("paper", "CONVERSATIONS.md")


def test_missing_reference_data_skips_elsewhere(missing_reference, monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="reference data not available"):
        conftest.reference_path("paper", "CONVERSATIONS.md")


def test_present_reference_data_is_returned():
    assert conftest.reference_path("paper", "CONVERSATIONS.md").is_file()
