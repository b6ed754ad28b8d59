"""Locating the real Prometheus-ecosystem binaries the rule tests need.

Under CI=true a missing binary is a failure (CI installs them); elsewhere the test skips
with the command that installs it.
"""

from __future__ import annotations

import os
import shutil

import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"
DEBIAN_PACKAGE = {
    "promtool": "prometheus",
    "prometheus": "prometheus",
    "amtool": "prometheus-alertmanager",
    "prometheus-alertmanager": "prometheus-alertmanager",
    "curl": "curl",
    "openssl": "openssl",
}


def require(binary: str) -> str:
    found = shutil.which(binary)
    if found:
        return found
    message = f"{binary} not found; apt-get install {DEBIAN_PACKAGE.get(binary, binary)}"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)
    raise AssertionError  # unreachable: skip raises
