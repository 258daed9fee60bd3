"""The public API (`import pythia_forensics as pf`) survives the package's folder layout."""
from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import pythia_forensics as pf


@pytest.mark.parametrize("name", [n for n in pf.__all__ if n != "__version__"])
def test_every_public_name_is_the_object_its_stage_module_defines(name):
    obj = getattr(pf, name)
    module = importlib.import_module(obj.__module__)
    assert getattr(module, name) is obj
    assert obj.__module__.startswith("pythia_forensics.")


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'scoring_v2'"):
        pf.scoring_v2  # noqa: B018


def test_dir_lists_every_lazily_exported_name():
    # the lazy names exist only in the module's table until first use; dir() must show them
    names = set(dir(pf))
    assert "Monitor" in names and "MonitorCallback" in names
    assert set(pf.__all__) <= names
    assert dir(pf) == sorted(dir(pf))


@pytest.mark.slow
def test_importing_the_package_does_not_import_torch():
    code = "import sys, pythia_forensics; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"

