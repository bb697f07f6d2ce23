"""Source threads: every failure ends in a retry or a visible state, never a silently dead stream."""

import time

import pytest

try:
    import sounddevice as sd
except OSError as e:  # the Python package is installed, the PortAudio library it loads is not
    pytest.skip(f"needs the PortAudio library (Debian: libportaudio2): {e}", allow_module_level=True)

from calmd.capture.sources import MicSource, Source
from calmd.config import StreamSection


def run_source(source: Source, until, timeout: float = 10.0) -> list[tuple[str, str | None]]:
    states: list[tuple[str, str | None]] = []
    source.on_state = lambda state, error: states.append((state, error))
    source.start()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not until(states):
        time.sleep(0.02)
    source.stop()
    source.thread.join(5)
    return states


def test_a_device_that_cannot_be_opened_is_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args, **_kwargs):
        raise sd.PortAudioError("Unanticipated host error")

    monkeypatch.setattr(sd, "query_devices", lambda *_a, **_k: {"default_samplerate": 48000.0})
    monkeypatch.setattr(sd, "InputStream", refuse)
    cfg = StreamSection(id="mic", type="mic", backoff_initial_s=0.05, backoff_max_s=0.1)
    source = MicSource(cfg, lambda chunk: None, lambda *_: None)
    states = run_source(source, lambda s: sum(x[0] == "backoff" for x in s) >= 3)
    backoffs = [e for state, e in states if state == "backoff"]
    assert len(backoffs) >= 3 and source.reconnects >= 3
    assert "could not be opened" in backoffs[0] and "Unanticipated host error" in backoffs[0]
    assert source.thread.is_alive() is False  # stopped on request, not by the error


def test_an_unforeseen_error_marks_the_stream_failed() -> None:
    class Broken(Source):
        def chunks(self):
            raise KeyError("bug")
            yield  # pragma: no cover

    cfg = StreamSection(id="x", type="stdin", sample_rate=8000)
    states = run_source(Broken(cfg, lambda chunk: None, lambda *_: None), lambda s: any(x[0] == "failed" for x in s))
    assert states[-1] == ("failed", "KeyError: 'bug'")


def test_a_delayed_source_delivers_nothing_before_its_delay(tmp_path) -> None:
    import numpy as np
    import soundfile as sf

    from calmd.capture.sources import FileSource

    wav = tmp_path / "a.wav"
    sf.write(wav, np.zeros(16_000, dtype=np.float32), 16_000)
    cfg = StreamSection(id="f", type="file", path=wav, realtime=False)
    first: list[float] = []
    source = FileSource(cfg, lambda chunk: first.append(time.monotonic()) if not first else None, lambda *_: None)
    started = time.monotonic()
    source.start(delay_s=0.5)
    source.thread.join(10)
    assert first and first[0] - started >= 0.5  # a lower bound only: a busy machine can only add to it


def test_a_source_stopped_during_its_delay_never_connects() -> None:
    class Counting(Source):
        def chunks(self):
            raise AssertionError("connected although stopped during the delay")
            yield  # pragma: no cover

    states: list[tuple[str, str | None]] = []
    cfg = StreamSection(id="x", type="stdin", sample_rate=8000)
    source = Counting(cfg, lambda c: None, lambda *a: states.append(a))
    source.start(delay_s=60)
    source.stop()
    source.thread.join(5)
    assert not source.thread.is_alive() and states == [("stopped", None)]


@pytest.mark.parametrize(("spread", "expected_s"), [(None, 2.0), (0.0, 0.0)])
def test_calmd_starts_fixed_window_streams_spread_over_one_hop(
    tiny_model_dir, classifier_file, tmp_path, spread, expected_s
) -> None:
    """Unset, start_spread_s is the hop in vad mode "none": stream k of n starts k * hop / n later."""
    import numpy as np
    import soundfile as sf

    from calmd.config import parse_config
    from calmd.inference.service import Service

    wav = tmp_path / "a.wav"
    sf.write(wav, np.zeros(8_000, dtype=np.float32), 16_000)
    streams = [{"id": f"s{i}", "type": "file", "path": str(wav), "realtime": False} for i in range(2)]
    inference = {} if spread is None else {"start_spread_s": spread}
    cfg = parse_config({
        "model": {"path": str(tiny_model_dir), "classifier": str(classifier_file)},
        "publish": {"endpoint": "tcp://127.0.0.1:0"}, "metrics": {"enabled": False},
        "vad": {"mode": "none", "window_s": 2.0, "hop_s": 2.0}, "inference": inference, "streams": streams,
    })  # fmt: skip
    service = Service(cfg)
    started: dict[str, float] = {}
    service.start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not service.all_finished():
            time.sleep(0.02)
        for sid in ("s0", "s1"):
            started[sid] = service.streams.stats[sid].t0_wall
    finally:
        service.stop(5)
    gap = started["s1"] - started["s0"]
    # Spread: a lower bound from the delay itself. Either way a loaded machine may add up to 1.5 s of jitter.
    lower = expected_s / 2 - 0.05 if expected_s else -1.5
    assert lower <= gap <= expected_s / 2 + 1.5
