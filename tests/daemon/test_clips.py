"""Detection clips: known audio through the recorder, sidecars, retention by age and quota, bad folders,
and calmd saving the clip of each event it publishes."""

import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import soundfile as sf

from calm_core.messages.client import Subscriber
from calm_core.messages.events import EdgeEvent, StatusEvent
from calmd.config import ClipsSection, ConfigError, parse_config
from calmd.outputs.clips import ClipRecorder
from calmd.outputs.detections import DetectionTracker, Edge
from calmd.outputs.metrics import Metrics
from calmd.outputs.sinks import StreamInfo

from .conftest import ENV, endpoint_of, free_port, listen_to_late_scene, schema, wait_for, write_config
from .test_signals import next_matching
from .test_telephony import audiosocket_call, call_audio

SR = 16_000
CLASSIFIER = lambda: ("home", "ab" * 32)  # noqa: E731  (name, fingerprint)
T0 = 1_795_000_000.0  # wall clock of stream time 0: 2026-11-18T11:06:40Z


def source_audio(seconds: float, seed: int = 0) -> np.ndarray:
    """Noise already on the 16-bit grid, so FLAC and WAV give back exactly these samples."""
    rng = np.random.default_rng(seed)
    return (rng.integers(-8000, 8000, int(seconds * SR)) / 32768).astype(np.float32)


def recorder(
    tmp_path: Path, metrics: Metrics | None = None, clock: Callable[[], float] = time.time, **clips
) -> ClipRecorder:
    cfg = ClipsSection(enabled=True, dir=tmp_path / "clips", min_free_mb=0, **clips)
    return ClipRecorder(cfg, end_after_s=3.0, metrics=metrics or Metrics(), classifier=CLASSIFIER, clock=clock)


def clips_two_days_apart(rec: ClipRecorder, now: list[float]) -> tuple[str, str]:
    """An old clip, then two days later (on the recorder's clock) a recent one."""
    feed(rec, "door", source_audio(20.0))
    old = rec.save("door", event("dog", (0.0, 1.0, 0.5)), T0)
    now[0] += 2 * 86_400
    recent = rec.save("door", event("cat", (2.0, 3.0, 0.5)), T0)
    assert old is not None and recent is not None
    return old, recent


def feed(rec: ClipRecorder, stream: str, audio: np.ndarray, chunk: int = 4_800) -> None:
    for i in range(0, audio.size, chunk):
        rec.audio(stream, audio[i : i + chunk], (i + chunk) / SR)


def event(label: str, *segments: tuple[float, float, float]) -> Edge:
    """The end edge of an event made of (start_s, end_s, score) segments, through the real tracker."""
    t = DetectionTracker(end_after_s=3.0)
    for start, end, score in segments:
        t.label(label, score, start, end, ((label, score), ("other", round(1 - score, 3))))
    [end_edge] = t.end()
    return end_edge


def value(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


@pytest.mark.parametrize("fmt", ["flac", "wav"])
def test_clip_holds_the_source_audio_from_pre_roll_to_post_roll(tmp_path: Path, fmt: str) -> None:
    rec = recorder(tmp_path, format=fmt, pre_roll_s=1.5, post_roll_s=0.75)
    audio = source_audio(20.0)
    feed(rec, "door", audio)
    edge = event("glass break", (5.0, 6.0, 0.7), (6.5, 8.25, 0.9))
    rel = rec.save("door", edge, T0)
    assert rel == f"door/20261118T110645.000Z_glass-break.{fmt}"
    samples, rate = sf.read(tmp_path / "clips" / rel, dtype="float32")
    assert rate == SR
    np.testing.assert_array_equal(samples, audio[int(3.5 * SR) : int(9.0 * SR)])  # [5 - 1.5, 8.25 + 0.75)


def test_opus_clip_decodes_to_the_clip_length(tmp_path: Path) -> None:
    if "OPUS" not in sf.available_subtypes("OGG"):
        pytest.skip("this libsndfile has no Opus encoder")
    rec = recorder(tmp_path, format="ogg", pre_roll_s=1.0, post_roll_s=1.0)
    feed(rec, "door", source_audio(10.0))
    rel = rec.save("door", event("dog", (3.0, 4.0, 0.8)), T0)
    assert rel is not None and rel.endswith(".ogg")
    samples, rate = sf.read(tmp_path / "clips" / rel, dtype="float32")
    assert (rate, samples.size) == (SR, 3 * SR)


def top(*scored: tuple[str, float]) -> list[dict[str, object]]:
    return [{"label": label, "score": score} for label, score in scored]


def test_sidecar_describes_the_event(tmp_path: Path) -> None:
    rec = recorder(tmp_path, pre_roll_s=2.0, post_roll_s=0.5)
    feed(rec, "door", source_audio(12.0))
    rel = rec.save("door", event("dog", (1.0, 2.0, 0.6), (2.0, 3.5, 0.8)), T0)
    assert rel is not None
    sidecar = json.loads((tmp_path / "clips" / rel).with_suffix(".json").read_text())
    jsonschema.validate(sidecar, schema("clip"))
    assert sidecar == {
        "schema": "calm.clip/1", "clip": Path(rel).name, "stream": "door", "label": "dog", "score": 0.8, "hits": 2,
        "segments": [
            {"start_s": 1.0, "end_s": 2.0, "score": 0.6, "top": top(("dog", 0.6), ("other", 0.4))},
            {"start_s": 2.0, "end_s": 3.5, "score": 0.8, "top": top(("dog", 0.8), ("other", 0.2))},
        ],
        "top": top(("dog", 0.8), ("other", 0.2)),  # of the event's best segment
        "start_s": 1.0, "end_s": 3.5, "start_utc": "2026-11-18T11:06:41.000Z", "end_utc": "2026-11-18T11:06:43.500Z",
        # the pre-roll is cut at the stream's start
        "clip_start_s": 0.0, "clip_end_s": 4.0, "clip_start_utc": "2026-11-18T11:06:40.000Z", "truncated": False,
        "classifier": "home", "fingerprint": "ab" * 32, "format": "flac", "sample_rate": SR, "samples": 4 * SR,
    }  # fmt: skip


def test_a_long_event_keeps_its_last_max_clip_s(tmp_path: Path) -> None:
    rec = recorder(tmp_path, pre_roll_s=1.0, post_roll_s=1.0, max_clip_s=4.0)
    audio = source_audio(30.0)
    feed(rec, "door", audio)
    rel = rec.save("door", event("dog", (5.0, 8.0, 0.6), (8.0, 15.0, 0.6)), T0)
    assert rel is not None
    samples, _ = sf.read(tmp_path / "clips" / rel, dtype="float32")
    np.testing.assert_array_equal(samples, audio[12 * SR : 16 * SR])
    assert json.loads((tmp_path / "clips" / rel).with_suffix(".json").read_text())["truncated"] is True


def test_each_stream_id_gets_a_folder_of_its_own_inside_the_clips_folder(tmp_path: Path) -> None:
    rec = recorder(tmp_path, pre_roll_s=0.0, post_roll_s=0.0)
    streams = ["door", ".door", "door.", "-", ".", "..", "..."]
    audio = {stream: source_audio(4.0, seed=n) for n, stream in enumerate(streams)}
    for stream in streams:
        feed(rec, stream, audio[stream])
    saved = {stream: rec.save(stream, event("dog", (1.0, 2.0, 0.5)), T0) for stream in streams}
    folders = {stream: (tmp_path / "clips" / str(rel)).parent for stream, rel in saved.items()}
    assert len(set(folders.values())) == len(streams), folders
    for stream, folder in folders.items():
        assert folder.parent == tmp_path / "clips" and not folder.name.startswith("."), folder
        [clip] = folder.glob("*.flac")
        np.testing.assert_array_equal(sf.read(clip, dtype="float32")[0], audio[stream][1 * SR : 2 * SR])
        assert json.loads(clip.with_suffix(".json").read_text())["stream"] == stream


def test_audio_that_has_left_the_ring_is_refused_and_counted(tmp_path: Path) -> None:
    metrics = Metrics()
    rec = recorder(tmp_path, metrics, max_clip_s=1.0)  # the ring holds 1 + 3 (end_after_s) + 30 s
    feed(rec, "door", source_audio(60.0))
    assert rec.save("door", event("dog", (2.0, 3.0, 0.6)), T0) is None
    assert rec.save("other", event("dog", (2.0, 3.0, 0.6)), T0) is None  # no audio at all
    assert value(metrics, "calm_clips_refused_total", reason="audio") == 2
    assert not list((tmp_path / "clips").rglob("*.flac"))


def stored_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def test_tiny_quota_deletes_the_oldest_first_and_is_never_exceeded(tmp_path: Path) -> None:
    metrics = Metrics()
    audio = source_audio(60.0)
    probe = recorder(tmp_path / "probe", pre_roll_s=0.0, post_roll_s=0.0)
    feed(probe, "door", audio)
    one = probe.save("door", event("dog", (0.0, 2.0, 0.5)), T0)
    assert one is not None
    clip_bytes = stored_bytes(tmp_path / "probe" / "clips")  # one 2 s clip and its sidecar
    quota_mb = 2.5 * clip_bytes / 1e6  # room for two
    rec = recorder(tmp_path, metrics, pre_roll_s=0.0, post_roll_s=0.0, max_total_mb=quota_mb)
    feed(rec, "door", audio)
    saved = []
    for n in range(6):
        rel = rec.save("door", event("dog", (n * 5.0, n * 5.0 + 2.0, 0.5)), T0)
        assert rel is not None
        saved.append(rel)
        assert stored_bytes(tmp_path / "clips") <= quota_mb * 1e6
    left = sorted(p.relative_to(tmp_path / "clips").as_posix() for p in (tmp_path / "clips").rglob("*.flac"))
    assert left == saved[-2:]
    assert not list((tmp_path / "clips").rglob(".*.tmp"))
    assert value(metrics, "calm_clips_saved_total") == 6
    assert value(metrics, "calm_clips_deleted_total", reason="quota") == 4
    assert value(metrics, "calm_clips_bytes") == stored_bytes(tmp_path / "clips")


def test_a_clip_larger_than_the_quota_is_refused_and_nothing_is_deleted(tmp_path: Path) -> None:
    metrics = Metrics()
    rec = recorder(tmp_path, metrics, pre_roll_s=0.0, post_roll_s=0.0, max_total_mb=0.1)
    feed(rec, "door", source_audio(20.0))
    small = rec.save("door", event("dog", (0.0, 0.5, 0.5)), T0)  # ~12 kB
    assert small is not None
    assert rec.save("door", event("dog", (2.0, 12.0, 0.5)), T0) is None  # ~240 kB
    assert value(metrics, "calm_clips_refused_total", reason="quota") == 1
    assert value(metrics, "calm_clips_deleted_total", reason="quota") == 0
    assert (tmp_path / "clips" / small).exists()


def test_clips_past_max_age_are_deleted_before_a_new_one_is_written(tmp_path: Path) -> None:
    metrics = Metrics()
    now = [time.time()]
    rec = recorder(tmp_path, metrics, clock=lambda: now[0], pre_roll_s=0, post_roll_s=0, max_age_days=7)
    old, recent = clips_two_days_apart(rec, now)
    now[0] += 6 * 86_400  # old: 8 days, recent: 6
    assert rec.save("door", event("dog", (4.0, 5.0, 0.5)), T0) is not None
    assert not (tmp_path / "clips" / old).exists() and not (tmp_path / "clips" / old).with_suffix(".json").exists()
    assert (tmp_path / "clips" / recent).exists()
    assert value(metrics, "calm_clips_deleted_total", reason="age") == 1


def test_after_a_restart_clips_are_aged_by_their_file_times(tmp_path: Path) -> None:
    rec = recorder(tmp_path, pre_roll_s=0.0, post_roll_s=0.0)
    feed(rec, "door", source_audio(20.0))
    old = rec.save("door", event("dog", (0.0, 1.0, 0.5)), T0)
    recent = rec.save("door", event("cat", (2.0, 3.0, 0.5)), T0)
    assert old is not None and recent is not None
    eight_days_ago = time.time() - 8 * 86_400
    for p in ((tmp_path / "clips" / old), (tmp_path / "clips" / old).with_suffix(".json")):
        os.utime(p, (eight_days_ago, eight_days_ago))
    metrics = Metrics()
    restarted = recorder(tmp_path, metrics, pre_roll_s=0.0, post_roll_s=0.0, max_age_days=7)
    assert value(metrics, "calm_clips_bytes") == stored_bytes(tmp_path / "clips")
    feed(restarted, "door", source_audio(20.0))
    assert restarted.save("door", event("dog", (4.0, 5.0, 0.5)), T0) is not None
    assert not (tmp_path / "clips" / old).exists() and (tmp_path / "clips" / recent).exists()
    assert value(metrics, "calm_clips_deleted_total", reason="age") == 1


def heartbeat(seq: int = 0) -> StatusEvent:
    return StatusEvent(
        seq=seq, instance="test", time_utc="2026-11-18T11:06:40.000Z", uptime_s=1.0, queue_depth=0,
        classifier="home", fingerprint="ab" * 32, exit_layer=3,
    )  # fmt: skip


def test_clips_past_max_age_are_deleted_at_a_status_with_no_new_event(tmp_path: Path) -> None:
    metrics = Metrics()
    now = [time.time()]
    rec = recorder(tmp_path, metrics, clock=lambda: now[0], pre_roll_s=0, post_roll_s=0, max_age_days=7)
    old, recent = clips_two_days_apart(rec, now)
    rec.event(heartbeat(0))
    assert (tmp_path / "clips" / old).exists()  # 2 days old: kept
    now[0] += 6 * 86_400  # old: 8 days, recent: 6
    rec.event(heartbeat(1))
    assert not (tmp_path / "clips" / old).exists() and not (tmp_path / "clips" / old).with_suffix(".json").exists()
    assert (tmp_path / "clips" / recent).exists()
    assert value(metrics, "calm_clips_deleted_total", reason="age") == 1
    assert value(metrics, "calm_clips_bytes") == stored_bytes(tmp_path / "clips")


def test_calmd_deletes_an_aged_clip_while_no_event_happens(
    tmp_path: Path, tiny_model_dir, classifier_file, daemon_factory
) -> None:
    clips = tmp_path / "clips"
    rec = recorder(tmp_path, pre_roll_s=0.0, post_roll_s=0.0)
    feed(rec, "room", source_audio(5.0))
    old = rec.save("room", event("dog", (1.0, 2.0, 0.5)), T0)
    assert old is not None
    forty_days_ago = time.time() - 40 * 86_400
    for p in (clips / old, (clips / old).with_suffix(".json")):
        os.utime(p, (forty_days_ago, forty_days_ago))
    silence = tmp_path / "silence.wav"
    sf.write(silence, np.zeros(2 * SR, np.float32), SR, subtype="PCM_16")
    config = write_config(
        tmp_path / "calmd.toml", tiny_model_dir, classifier_file,
        f'[[streams]]\nid = "room"\ntype = "file"\npath = "{silence}"\nloop = true\n',
        extra=f'[events]\nenabled = true\n[clips]\nenabled = true\ndir = "{clips}"\nmax_age_days = 30\n'
        "min_free_mb = 0\n",
    )  # fmt: skip
    daemon = daemon_factory(config)
    gone = wait_for(lambda: not (clips / old).exists() or daemon.proc.poll() is not None, 300)
    code, log = daemon.stop()
    assert gone and not (clips / old).exists(), log[-3000:]
    assert not (clips / old).with_suffix(".json").exists()
    assert "(age)" in log and f"saved {clips}" not in log, log[-3000:]  # no event: the heartbeat's sweep deleted it
    assert code == 0, log[-3000:]


def test_a_clip_that_would_leave_too_little_free_disk_is_refused(tmp_path: Path) -> None:
    metrics = Metrics()
    cfg = ClipsSection(enabled=True, dir=tmp_path / "clips", min_free_mb=1e12)  # an exabyte free: never
    rec = ClipRecorder(cfg, end_after_s=3.0, metrics=metrics, classifier=CLASSIFIER)
    feed(rec, "door", source_audio(5.0))
    assert rec.save("door", event("dog", (1.0, 2.0, 0.5)), T0) is None
    assert value(metrics, "calm_clips_refused_total", reason="disk") == 1
    assert not list((tmp_path / "clips").rglob("*.*"))


def test_a_write_error_is_counted_not_raised(tmp_path: Path) -> None:
    metrics = Metrics()
    rec = recorder(tmp_path, metrics)
    (tmp_path / "clips" / "door").write_text("a file where the stream's folder should be")
    feed(rec, "door", source_audio(5.0))
    assert rec.save("door", event("dog", (1.0, 2.0, 0.5)), T0) is None
    assert value(metrics, "calm_clips_refused_total", reason="error") == 1


def test_an_ended_stream_drops_its_audio(tmp_path: Path) -> None:
    rec = recorder(tmp_path)
    feed(rec, "call-1", source_audio(2.0))
    rec.stream_ended(StreamInfo("call-1", "call-1", "in", "audiosocket"), 2.0, None)
    assert rec.rings == {}


def read_only_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    if os.access(folder, os.W_OK):  # root writes anyway; sysfs refuses new files even to root
        return Path("/sys")
    return folder


def test_a_folder_that_cannot_be_written_is_a_start_up_error(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    for folder in (tmp_path / "a-file" / "clips", read_only_dir(tmp_path)):
        with pytest.raises(ConfigError, match=f"clips.dir '{folder}': cannot write clips there"):
            ClipRecorder(ClipsSection(enabled=True, dir=folder), 3.0, Metrics(), CLASSIFIER)


def test_calmd_refuses_to_start_on_a_clips_folder_it_cannot_write(
    tmp_path: Path, tiny_model_dir, classifier_file, scene_wav
) -> None:
    folder = read_only_dir(tmp_path)
    config = write_config(
        tmp_path / "calmd.toml", tiny_model_dir, classifier_file,
        f'[[streams]]\nid = "room"\ntype = "file"\npath = "{scene_wav}"\n',
        extra=f'[events]\nenabled = true\n[clips]\nenabled = true\ndir = "{folder}"\n',
    )  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "calmd", "--config", str(config)], capture_output=True, text=True, env=ENV, timeout=300
    )
    assert proc.returncode == 2, proc.stderr
    assert f"clips.dir '{folder}': cannot write clips there" in proc.stderr


def test_end_events_carry_a_clip_that_exists_and_decodes(
    tmp_path: Path, tiny_model_dir, classifier_file, scene_wav, daemon_factory
) -> None:
    clips = tmp_path / "clips"
    is_end = lambda m: m["schema"] == "calm.event/2" and m["kind"] == "end"  # noqa: E731
    code, log, messages = listen_to_late_scene(
        tmp_path, tiny_model_dir, classifier_file, scene_wav, daemon_factory,
        extra=(
            "[events]\nenabled = true\nend_after_s = 0.5\n"
            f'[clips]\nenabled = true\ndir = "{clips}"\npre_roll_s = 0.25\npost_roll_s = 0.5\nmin_free_mb = 0\n'
        ),
        done=lambda messages: sum(map(is_end, messages)) >= 4,
    )  # fmt: skip
    assert code == 0, log
    ends = [m for m in messages if is_end(m)]
    assert len(ends) == 4
    for end in ends:
        jsonschema.validate(end, schema("event"))
        assert end["clip"] is not None and end["clip"].startswith("room/"), end
        samples, rate = sf.read(clips / end["clip"], dtype="float32")
        sidecar = json.loads((clips / end["clip"]).with_suffix(".json").read_text())
        jsonschema.validate(sidecar, schema("clip"))
        # the clip spans the event's segments, the pre-roll before them and the post-roll after
        assert rate == 16_000 and samples.size == sidecar["samples"]
        assert sidecar["clip_start_s"] == pytest.approx(end["start_s"] - 0.25, abs=1e-3)
        # (the last one's post-roll is cut at the end of the file)
        assert sidecar["clip_end_s"] == pytest.approx(min(end["time_s"] + 0.5, 17.0), abs=1e-3)
        assert sidecar["label"] == end["label"] and sidecar["stream"] == "room"
        assert (sidecar["start_s"], sidecar["end_s"]) == pytest.approx((end["start_s"], end["time_s"]), abs=1e-3)
        assert np.abs(samples).max() > 0.05  # the voiced sound, not silence


@pytest.mark.parametrize(
    ("events", "clips", "message"),
    [
        ({"enabled": False}, {}, "clips.enabled needs events.enabled = true"),
        ({"enabled": True, "end_after_s": 1.0}, {"post_roll_s": 1.5}, "post_roll_s (1.5) must not exceed events"),
        ({"enabled": True}, {"format": "mp3"}, "clips.format: Input should be 'flac', 'wav' or 'ogg'"),
        ({"enabled": True}, {"max_total_mb": 0}, "clips.max_total_mb: Input should be greater than 0"),
        ({"enabled": True}, {"keep": 3}, "clips.keep: unknown key"),
    ],
)
def test_bad_clips_settings_are_refused_naming_the_key(events: dict, clips: dict, message: str) -> None:
    data = {
        "model": {"path": "m", "classifier": "c.safetensors"},
        "streams": [{"id": "s", "type": "file", "path": "a.wav"}],
        "events": events,
        "clips": {"enabled": True, **clips},
    }
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config(data, "calmd.toml")


def test_a_call_that_hangs_up_mid_event_ends_it_with_its_clip(
    tmp_path: Path, tiny_model_dir, classifier_file, daemon_factory
) -> None:
    # end_after_s is longer than the call: only the hangup can end the event, after the call's last label
    port = free_port()
    clips = tmp_path / "clips"
    config = write_config(
        tmp_path / "calmd.toml", tiny_model_dir, classifier_file,
        '[calls]\npositive = "beep"\n' f"[listeners.audiosocket]\nport = {port}\n",
        extra=(
            "[events]\nenabled = true\nend_after_s = 60\n"
            f'[clips]\nenabled = true\ndir = "{clips}"\npre_roll_s = 1.0\npost_roll_s = 5.0\nmin_free_mb = 0\n'
        ),
    )  # fmt: skip
    with Subscriber(endpoint_of(config), events=True) as sub:
        daemon = daemon_factory(config)
        # the first status shows the subscription is through: nothing calmd sends after it is lost
        assert next_matching(sub, lambda e: isinstance(e, StatusEvent), 300) is not None, daemon.stop()[1][-3000:]
        audio = call_audio(1)  # 1.2 s of silence, 0.8 s of voice, 0.6 s of silence: 2.6 s
        call = uuid.UUID(int=7)
        audiosocket_call(port, call, audio, kind=0x12, rate=16000)
        end = next_matching(sub, lambda e: isinstance(e, EdgeEvent) and e.kind == "end", 300)
        code, log = daemon.stop()
    assert end is not None, log[-3000:]
    assert end.stream == str(call) and end.clip is not None and end.clip.startswith(f"{call}/")
    samples, _ = sf.read(clips / end.clip, dtype="float32")
    sidecar = json.loads((clips / end.clip).with_suffix(".json").read_text())
    # from a second before the segment to the end of the call: the post-roll is what the call still had
    first = round(sidecar["clip_start_s"] * SR)
    assert first == max(0, round((end.start_s - 1.0) * SR)) and sidecar["clip_end_s"] == 2.6
    # the call's 16-bit PCM and the clip's 16-bit FLAC each round once
    np.testing.assert_allclose(samples, audio[first:], atol=2 / 32768)
    assert code == 0, log[-3000:]
