"""A small RTSP server for the tests: a generated H.264 clip at ``rtsp://127.0.0.1:PORT/MOUNT``.

Run with a Python that has GStreamer's bindings (Debian: ``python3-gi``, ``gir1.2-gst-rtsp-server-1.0``,
``gstreamer1.0-plugins-{base,good,ugly}``), usually the system ``/usr/bin/python3``, not the project's venv::

    /usr/bin/python3 tests/runtime/rtsp_server.py --port 8554 --mount /test

It prints ``READY rtsp://127.0.0.1:PORT/MOUNT`` on stdout once it listens, and serves until SIGTERM/SIGINT.
``--check`` only imports the bindings and checks the elements, printing ``OK`` (exit 0) or the reason (exit 1).
The clip is ``videotestsrc`` (a moving ball, live) encoded by ``x264enc`` (``--codec jpeg``: ``jpegenc``).
"""

from __future__ import annotations

import argparse
import signal
import sys

ELEMENTS = {"h264": ("videotestsrc", "x264enc", "rtph264pay"), "jpeg": ("videotestsrc", "jpegenc", "rtpjpegpay")}


def _launch(codec: str, width: int, height: int, fps: int) -> str:
    caps = f"video/x-raw,width={width},height={height},framerate={fps}/1"
    if codec == "jpeg":
        encode = "jpegenc quality=80 ! rtpjpegpay name=pay0 pt=26"
    else:
        encode = (
            f"x264enc tune=zerolatency speed-preset=ultrafast key-int-max={fps} bitrate=800 ! "
            "video/x-h264,profile=baseline ! rtph264pay name=pay0 pt=96 config-interval=1"
        )
    return f"( videotestsrc is-live=true pattern=ball ! {caps} ! videoconvert ! {encode} )"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8554)
    parser.add_argument("--mount", default="/test")
    parser.add_argument("--codec", choices=sorted(ELEMENTS), default="h264")
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--fps", type=int, default=15)
    parser.add_argument("--check", action="store_true", help="only check that the server can run here")
    args = parser.parse_args()
    try:
        import gi

        gi.require_version("Gst", "1.0")
        gi.require_version("GstRtspServer", "1.0")
        from gi.repository import GLib, Gst, GstRtspServer
    except (ImportError, ValueError) as err:
        print(f"no GStreamer RTSP server bindings: {err}")
        return 1
    Gst.init(None)
    missing = [name for name in ELEMENTS[args.codec] if Gst.ElementFactory.find(name) is None]
    if missing:
        print(f"missing GStreamer elements {missing}")
        return 1
    if args.check:
        print("OK")
        return 0

    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(_launch(args.codec, args.width, args.height, args.fps))
    factory.set_shared(True)
    server.get_mount_points().add_factory(args.mount, factory)
    if server.attach(None) == 0:
        print(f"cannot listen on 127.0.0.1:{args.port}")
        return 1
    loop = GLib.MainLoop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, sig, loop.quit)
    print(f"READY rtsp://127.0.0.1:{args.port}{args.mount}", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
