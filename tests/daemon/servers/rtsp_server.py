"""A real RTSP server on 127.0.0.1 serving a WAV file in a loop (GStreamer's rtsp-server, through python3-gi).

Run with Debian's python3:  /usr/bin/python3 rtsp_server.py PORT FILE.wav
Prints "READY" once it listens; serves until killed.
"""

import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def main() -> None:
    port, path = sys.argv[1], sys.argv[2]
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(port)
    factory = GstRtspServer.RTSPMediaFactory()
    # Real-time paced, looping WAV -> L16 RTP; each client gets its own pipeline.
    factory.set_launch(
        f"( multifilesrc location={path} loop=true ! wavparse ! audioconvert ! audioresample "
        "! audio/x-raw,rate=16000,channels=1 ! identity sync=true ! rtpL16pay name=pay0 pt=96 )"
    )
    factory.set_shared(False)
    server.get_mount_points().add_factory("/audio", factory)
    if server.attach(None) == 0:
        print("FAILED to bind", flush=True)
        sys.exit(1)
    print("READY", flush=True)
    GLib.MainLoop().run()


if __name__ == "__main__":
    main()
