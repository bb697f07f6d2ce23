"""Capture sources: file, RTSP (ffmpeg), microphone (sounddevice), stdin. Each runs in its own thread,
delivers 16 kHz mono float32 chunks, and reconnects with exponential backoff and jitter."""

from __future__ import annotations

import logging
import os
import random
import selectors
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import BinaryIO

import numpy as np
import soxr

from calm_core.audio.decode import decode_file, to_float_mono

from ..config import StreamSection

SAMPLE_RATE = 16_000
CHUNK_S = 0.1
POLL_S = 0.2  # blocking waits are cut into slices this long, so that stop() is seen promptly
log = logging.getLogger("calmd.source")

Sink = Callable[[np.ndarray], None]


class StreamStall(RuntimeError):
    """The stream is open but delivered nothing for stall_timeout_s."""


class Source:
    """Base: the reconnect loop and state; subclasses implement chunks()."""

    def __init__(self, cfg: StreamSection, sink: Sink, on_state: Callable[[str, str | None], None]):
        self.cfg = cfg
        self.sink = sink
        self.on_state = on_state
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"source-{cfg.id}", daemon=True)
        self.reconnects = 0
        self.delay_s = 0.0

    def start(self, delay_s: float = 0.0) -> None:
        """Start capturing, after delay_s (unless stopped first)."""
        self.delay_s = delay_s
        self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()

    def chunks(self) -> Iterator[np.ndarray]:
        raise NotImplementedError

    def finite(self) -> bool:
        """True for sources that end by themselves (a file played once)."""
        return False

    def _run(self) -> None:
        if self.delay_s > 0 and self.stop_event.wait(self.delay_s):
            self.on_state("stopped", None)
            return
        try:
            self._reconnect_loop()
        except Exception as e:  # the thread's edge: an unforeseen error must not leave the stream silently dead
            log.exception("stream %s: stopped by an unexpected error", self.cfg.id)
            self.on_state("failed", f"{e.__class__.__name__}: {e}")

    def _reconnect_loop(self) -> None:
        delay = self.cfg.backoff_initial_s
        while not self.stop_event.is_set():
            self.on_state("connecting", None)
            delivered = False
            try:
                for chunk in self.chunks():
                    if self.stop_event.is_set():
                        break
                    if not delivered:
                        self.on_state("live", None)
                        delivered = True
                        delay = self.cfg.backoff_initial_s
                    self.sink(chunk)
                if self.stop_event.is_set():
                    break
                if self.finite():
                    self.on_state("finished", None)
                    return
                error = "stream ended"
            except (OSError, RuntimeError, ValueError) as e:
                error = f"{e.__class__.__name__}: {e}"
            self.reconnects += 1
            wait = delay * random.uniform(0.8, 1.2)  # jitter: many cameras failing together do not retry in step
            log.warning("stream %s: %s; retrying in %.1f s", self.cfg.id, error, wait)
            self.on_state("backoff", error)
            if self.stop_event.wait(wait):
                break
            delay = min(delay * 2, self.cfg.backoff_max_s)
        self.on_state("stopped", None)


class FileSource(Source):
    """A file decoded once, replayed in 100 ms chunks, optionally looped and paced in real time."""

    def finite(self) -> bool:
        return not self.cfg.loop

    def chunks(self) -> Iterator[np.ndarray]:
        assert self.cfg.path is not None
        data, rate = decode_file(self.cfg.path)
        audio = to_float_mono(data, source=str(self.cfg.path))
        if rate != SAMPLE_RATE:
            audio = soxr.resample(audio, rate, SAMPLE_RATE).astype(np.float32)
        step = int(CHUNK_S * SAMPLE_RATE)
        t0 = time.monotonic()
        sent = 0
        while True:
            for i in range(0, audio.size, step):
                if self.stop_event.is_set():
                    return
                chunk = audio[i : i + step]
                sent += chunk.size
                if self.cfg.realtime:
                    # Deliver a chunk once its last sample is "captured", as a live device does.
                    ahead = sent / SAMPLE_RATE - (time.monotonic() - t0)
                    if ahead > 0 and self.stop_event.wait(ahead):
                        return
                yield chunk
            if not self.cfg.loop:
                return


class PipeSource(Source):
    """Raw s16le PCM read from a pipe with a stall timeout, resampled to 16 kHz mono."""

    rate: int = SAMPLE_RATE
    channels: int = 1

    def _read_pcm(self, pipe: BinaryIO) -> Iterator[np.ndarray]:
        frame_bytes = 2 * self.channels
        block = int(CHUNK_S * self.rate) * frame_bytes
        resampler = (
            None if self.rate == SAMPLE_RATE else soxr.ResampleStream(self.rate, SAMPLE_RATE, 1, dtype="float32")
        )
        sel = selectors.DefaultSelector()
        sel.register(pipe, selectors.EVENT_READ)
        fd = pipe.fileno()
        rest = b""
        heard = time.monotonic()
        try:
            while not self.stop_event.is_set():
                if not sel.select(timeout=POLL_S):
                    if time.monotonic() - heard >= self.cfg.stall_timeout_s:
                        raise StreamStall(f"no audio for {self.cfg.stall_timeout_s:.0f} s")
                    continue
                heard = time.monotonic()
                data = os.read(fd, block)
                if not data:
                    return
                data = rest + data
                usable = len(data) // frame_bytes * frame_bytes
                rest = data[usable:]
                pcm = np.frombuffer(data[:usable], dtype="<i2").reshape(-1, self.channels)
                mono = to_float_mono(pcm, source=self.cfg.id)
                if resampler is not None:
                    mono = resampler.resample_chunk(mono)
                if mono.size:
                    yield mono
        finally:
            sel.close()


class RtspSource(PipeSource):
    """An RTSP stream decoded by an ffmpeg subprocess (argument list, never a shell)."""

    def chunks(self) -> Iterator[np.ndarray]:
        assert self.cfg.url is not None
        cmd = [
            "ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error",
            "-rtsp_transport", self.cfg.transport,
            "-timeout", str(int(self.cfg.stall_timeout_s * 1e6)),
            "-i", self.cfg.url,
            "-vn", "-ac", "1", "-ar", str(SAMPLE_RATE), "-f", "s16le", "pipe:1",
        ]  # fmt: skip
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        try:
            assert proc.stdout is not None
            yield from self._read_pcm(proc.stdout)  # type: ignore[arg-type]
        finally:
            proc.kill()
            _, err = proc.communicate(timeout=5)
            if err and not self.stop_event.is_set():
                log.info("stream %s: ffmpeg said: %s", self.cfg.id, err.decode(errors="replace").strip()[-300:])


class StdinSource(PipeSource):
    def chunks(self) -> Iterator[np.ndarray]:
        assert self.cfg.sample_rate is not None
        self.rate, self.channels = self.cfg.sample_rate, self.cfg.channels
        yield from self._read_pcm(sys.stdin.buffer)  # type: ignore[arg-type]

    def finite(self) -> bool:
        return True


class MicSource(Source):
    """A capture device through sounddevice (PortAudio) at its native rate, resampled to 16 kHz."""

    def chunks(self) -> Iterator[np.ndarray]:
        import queue

        import sounddevice as sd

        try:
            info = sd.query_devices(self.cfg.device, "input")
        except sd.PortAudioError as e:
            raise OSError(f"capture device {self.cfg.device!r}: {e}") from e
        rate = int(self.cfg.sample_rate or info["default_samplerate"])
        blocks: queue.Queue[np.ndarray] = queue.Queue(maxsize=100)
        resampler = None if rate == SAMPLE_RATE else soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32")

        def callback(indata: np.ndarray, frames: int, t: object, status: object) -> None:
            try:
                blocks.put_nowait(indata[:, 0].copy())
            except queue.Full:
                pass  # the consumer is gone or stuck; the stall timeout reports it

        try:
            stream = sd.InputStream(
                device=self.cfg.device, channels=1, samplerate=rate, dtype="float32", callback=callback
            )
        except sd.PortAudioError as e:  # device gone, sound server down: retried like any dropped source
            raise OSError(f"capture device {self.cfg.device!r} could not be opened: {e}") from e
        with stream:
            heard = time.monotonic()
            while not self.stop_event.is_set():
                try:
                    block = blocks.get(timeout=POLL_S)
                except queue.Empty:
                    if time.monotonic() - heard >= self.cfg.stall_timeout_s:
                        raise StreamStall(
                            f"capture device delivered nothing for {self.cfg.stall_timeout_s:.0f} s"
                        ) from None
                    continue
                heard = time.monotonic()
                yield block if resampler is None else resampler.resample_chunk(block)


SOURCES: dict[str, type[Source]] = {"file": FileSource, "rtsp": RtspSource, "mic": MicSource, "stdin": StdinSource}


def make_source(cfg: StreamSection, sink: Sink, on_state: Callable[[str, str | None], None]) -> Source:
    return SOURCES[cfg.type](cfg, sink, on_state)
