"""Fixtures of the reliability campaign: generated captures, cached for the session."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from adapters.deltadefi.session import ExchangeTruth, write_capture

Capture = tuple[Path, ExchangeTruth]


@pytest.fixture(scope="session")
def capture_factory(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Capture]:
    """``make(frames, seed, malformed_rate=0.0)``: a generated session capture and the
    exchange's truth, made once per test session."""
    made: dict[tuple[int, int, float], Capture] = {}
    folder = tmp_path_factory.mktemp("captures")

    def make(frames: int, seed: int, malformed_rate: float = 0.0) -> Capture:
        key = (frames, seed, malformed_rate)
        if key not in made:
            path = folder / f"session-{frames}-{seed}-{malformed_rate}.jsonl"
            truth = write_capture(str(path), frames, seed=seed, malformed_rate=malformed_rate)
            made[key] = (path, truth)
        return made[key]

    return make
