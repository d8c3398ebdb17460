"""Fixtures for the builder's tests: a small calibration file and cached builds."""

from __future__ import annotations

import json

import pytest
from build_testing import CALIBRATION

from engine.build import BuildSettings, build_engine


@pytest.fixture(scope="session")
def calibration_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("calibration") / "calibration.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in CALIBRATION))
    return path


@pytest.fixture(scope="session")
def built(tiny_checkpoint, calibration_file, tmp_path_factory):
    """built(**settings) -> BuildResult of tiny_checkpoint (cached per settings)."""
    cache = {}

    def make(**settings):
        key = repr(sorted(settings.items()))
        if key not in cache:
            settings = {"calibration": str(calibration_file), "dtype": "float32", **settings}
            out = tmp_path_factory.mktemp("engine") / "engine"
            cache[key] = build_engine(tiny_checkpoint, out, BuildSettings(**settings),
                                      progress=False)  # fmt: skip
        return cache[key]

    return make
