"""Optional packages: a missing one is named with the pip command of its extra."""

from __future__ import annotations

import subprocess
import sys

import pytest

from biasdecay.errors import BiasDecayError, MissingDependencyError
from biasdecay.extras import import_extra, install_command


def test_a_missing_module_names_its_extra_and_its_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "some_optional_pkg", None)  # import raises ImportError
    with pytest.raises(MissingDependencyError) as caught:
        import_extra("some_optional_pkg.sub", "plot", "drawing", note="; plots are skipped")
    message = str(caught.value)
    assert message.startswith("drawing needs the optional package 'some_optional_pkg'")
    assert message.endswith(
        "pip install 'biasdecay[plot]' (or pip install some_optional_pkg); plots are skipped"
    )
    assert isinstance(caught.value, ImportError) and isinstance(caught.value, BiasDecayError)
    assert install_command("data") == "pip install 'biasdecay[data]'"


def test_an_installed_module_is_returned():
    import math

    assert import_extra("math", "plot", "x") is math


@pytest.mark.parametrize(
    ("module", "blocked", "extra"),
    [
        ("biasdecay.integrations.lightning", "lightning", "lightning"),
        ("biasdecay.integrations.transformers", "transformers", "transformers"),
    ],
)
def test_an_integration_without_its_framework_says_what_to_install(module, blocked, extra):
    code = (
        f"import sys; sys.modules[{blocked!r}] = None\n"
        "from biasdecay.errors import MissingDependencyError\n"
        f"try:\n    import {module}\nexcept MissingDependencyError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert f"pip install 'biasdecay[{extra}]'" in out.stdout, out.stdout + out.stderr
