#!/usr/bin/python3
"""Serve video files over RTSP on 127.0.0.1, each looping forever, for the test suite.

Run this with Debian's /usr/bin/python3, because the GStreamer RTSP server bindings come from
Debian packages (scripts/install-rtsp.sh installs them). It imports only gi and the standard
library, never project code or pip packages.

Each mount plays one file. At start-up the server demuxes every file once and keeps its H.264
frames in memory. H.264 video is kept as is, and any other video codec is re-encoded to H.264
with x264enc. Every client gets its own pipeline (shared=false) whose appsrc replays those
frames from the first one, a keyframe, and shifts each loop's timestamps by the clip's
duration. Timestamps, and thus RTP timestamps, therefore keep increasing across loops, and no
seek is needed.

Once the server listens, it writes the single line `READY rtsp://127.0.0.1:PORT` to stdout.
Logs go to stderr and never contain the password.
"""

import argparse
import logging
import os
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstApp", "1.0")
gi.require_version("GstRtsp", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstApp, GstRtsp, GstRtspServer  # noqa: E402

log = logging.getLogger("rtsp_server")

HOST = "127.0.0.1"
ROLE = "tester"
# How far a client's stream may fall behind the pipeline clock before ClipFeeder skips ahead.
# A machine so busy that it delays frames by more than this also triggers the skip.
MAX_LAG_NS = Gst.SECOND
# Ports for RTP and RTCP over UDP, two per client. Every server starts at UDP_PORT_MIN, and
# when another process has bound a port, gst-rtsp-server 1.22 moves on to the next pair.
UDP_PORT_MIN = 20000
UDP_PORT_MAX = 59999
BUFFER_COPY_SHALLOW = (
    Gst.BufferCopyFlags.FLAGS | Gst.BufferCopyFlags.TIMESTAMPS
    | Gst.BufferCopyFlags.META | Gst.BufferCopyFlags.MEMORY
)
# Every element this script creates, checked at start-up because a missing one would
# otherwise fail inside a streaming thread.
REQUIRED_ELEMENTS = (
    "filesrc", "parsebin", "h264parse", "appsink", "appsrc", "rtph264pay",
    "decodebin", "videoconvert", "x264enc",
)
LOWER_TRANSPORTS = {
    "tcp": GstRtsp.RTSPLowerTrans.TCP,
    "udp": GstRtsp.RTSPLowerTrans.UDP,
}


class EncodedClip:
    """The H.264 frames of one file, with caps and timestamps that start at 0, kept in memory.

    `sync_times_ns` contains each buffer's DTS, or its PTS where DTS is missing, which is the
    time at which the sinks send it. `keyframe_indices` lists the buffers a decoder can
    start from.
    """

    def __init__(self, caps, buffers, duration_ns):
        self.caps = caps
        self.buffers = buffers
        self.duration_ns = duration_ns
        self.sync_times_ns = []
        self.keyframe_indices = []

        previous_ns = 0
        for index, buffer in enumerate(buffers):
            if buffer.dts != Gst.CLOCK_TIME_NONE:
                previous_ns = buffer.dts
            elif buffer.pts != Gst.CLOCK_TIME_NONE:
                previous_ns = buffer.pts
            self.sync_times_ns.append(previous_ns)
            if not buffer.has_flags(Gst.BufferFlags.DELTA_UNIT):
                self.keyframe_indices.append(index)


def load_clip(path, timeout_s):
    """Demux `path` once, re-encoding to H.264 only when its video is in another codec.

    Raises SystemExit naming the file when it has no video or GStreamer reports an error.
    """
    pipeline = Gst.Pipeline.new(None)
    source = make_element("filesrc", location=path)
    parser = make_element("parsebin")
    for element in (source, parser):
        pipeline.add(element)
    source.link(parser)

    # alignment=au makes every buffer one whole frame, so each carries one timestamp.
    sink = make_element(
        "appsink", sync=False, emit_signals=True,
        caps=Gst.Caps.from_string("video/x-h264,alignment=au"),
    )
    samples = []
    sink.connect("new-sample", lambda appsink: collect_sample(appsink, samples))
    parser.connect("pad-added", link_video_pad, pipeline, sink, path)

    pipeline.set_state(Gst.State.PLAYING)
    message = pipeline.get_bus().timed_pop_filtered(
        int(timeout_s * Gst.SECOND), Gst.MessageType.EOS | Gst.MessageType.ERROR
    )
    pipeline.set_state(Gst.State.NULL)

    if message is None:
        raise SystemExit(f"rtsp_server: reading {path} timed out after {timeout_s:g} s")
    if message.type == Gst.MessageType.ERROR:
        error, debug = message.parse_error()
        raise SystemExit(
            f"rtsp_server: cannot read video from {path}: {error.message} ({debug})"
        )
    if not samples:
        raise SystemExit(f"rtsp_server: no video frames found in {path}")
    return build_clip(samples, path)


def collect_sample(appsink, samples):
    samples.append(appsink.emit("pull-sample"))
    return Gst.FlowReturn.OK


def link_video_pad(parser, pad, pipeline, sink, path):
    caps = pad.get_current_caps() or pad.query_caps(None)
    media_type = caps.get_structure(0).get_name()
    if not media_type.startswith("video/") or sink.get_parent() is not None:
        log.debug("%s: ignoring %s stream", path, media_type)
        return

    if media_type == "video/x-h264":
        log.info("%s: sending H.264 without re-encoding", path)
        chain = [make_element("h264parse")]
    else:
        log.info("%s: re-encoding %s to H.264", path, media_type)
        chain = [
            make_element("decodebin"),
            make_element("videoconvert"),
            make_element("x264enc", tune="zerolatency", speed_preset="ultrafast", key_int_max=50),
            make_element("h264parse"),
        ]
    chain.append(sink)

    for element in chain:
        pipeline.add(element)
    link_chain(chain)
    for element in chain:
        element.sync_state_with_parent()
    pad.link(chain[0].get_static_pad("sink"))


def link_chain(chain):
    for upstream, downstream in zip(chain, chain[1:]):
        if upstream.get_factory().get_name() == "decodebin":
            # decodebin adds its source pad only after it has found a decoder.
            target = downstream.get_static_pad("sink")
            upstream.connect("pad-added", lambda _bin, pad, target=target: pad.link(target))
        else:
            upstream.link(downstream)


def build_clip(samples, path):
    buffers = [sample.get_buffer() for sample in samples]
    starts = [buffer.pts for buffer in buffers if buffer.pts != Gst.CLOCK_TIME_NONE]
    ends = [
        buffer.pts + buffer.duration
        for buffer in buffers
        if buffer.pts != Gst.CLOCK_TIME_NONE and buffer.duration != Gst.CLOCK_TIME_NONE
    ]
    if not starts or not ends:
        raise SystemExit(
            f"rtsp_server: the video frames in {path} carry no timestamps, so they cannot loop"
        )

    # The first loop must start at time 0, or the sinks would wait before sending anything.
    # x264enc, for one, starts its timestamps at 1000 hours.
    decode_times = [buffer.dts for buffer in buffers if buffer.dts != Gst.CLOCK_TIME_NONE]
    first_ns = min(starts + decode_times)
    buffers = [shift_buffer(buffer, -first_ns) for buffer in buffers]
    clip = EncodedClip(samples[0].get_caps(), buffers, max(ends) - min(starts))
    if not clip.keyframe_indices:
        raise SystemExit(
            f"rtsp_server: the video in {path} has no keyframe, so no client could decode it"
        )
    return clip


def shift_buffer(original, offset_ns):
    """Return a new buffer that shares `original`'s memory, with PTS and DTS moved by offset_ns."""
    # Gst.Buffer.copy() from PyGObject 3.42 returns the same buffer, so setting its PTS would
    # move the original too. copy_region makes a new buffer.
    buffer = original.copy_region(BUFFER_COPY_SHALLOW, 0, original.get_size())
    if original.pts != Gst.CLOCK_TIME_NONE:
        buffer.pts = original.pts + offset_ns
    if original.dts != Gst.CLOCK_TIME_NONE:
        buffer.dts = original.dts + offset_ns
    return buffer


class LoopingClipFactory(GstRtspServer.RTSPMediaFactory):
    """Media factory that gives every client its own appsrc, fed with `clip` in an endless loop."""

    def __init__(self, mount, clip):
        super().__init__()
        self.mount = mount
        self.clip = clip

    def do_create_element(self, url):
        # The appsrc is declared a non-seekable stream because ClipFeeder implements no seeking.
        bin_ = Gst.Bin.new(None)
        source = make_element(
            "appsrc", caps=self.clip.caps, format=Gst.Format.TIME, is_live=False,
            stream_type=GstApp.AppStreamType.STREAM,
        )
        payloader = make_element("rtph264pay", name="pay0", pt=96, config_interval=-1)
        bin_.add(source)
        bin_.add(payloader)
        source.link(payloader)

        feeder = ClipFeeder(self.mount, self.clip)
        source.connect(
            "need-data",
            lambda appsrc, _length: appsrc.emit(
                "push-buffer", feeder.next_buffer(element_running_time_ns(appsrc))
            ),
        )
        return bin_


class ClipFeeder:
    """One client's position in the endless loop over a clip.

    Each loop shifts PTS and DTS by the clip's duration, so timestamps, and thus RTP
    timestamps, keep increasing across loops.

    While the server is stopped with SIGSTOP the pipeline clock keeps running. On SIGCONT the
    sinks would send every late frame at once. A live camera would instead lose the frames of
    the pause, so the feeder jumps ahead to the first keyframe that is not late.
    """

    def __init__(self, mount, clip):
        self.mount = mount
        self.clip = clip
        self.loop_index = 0
        self.frame_index = 0

    def next_buffer(self, running_time_ns):
        if running_time_ns is not None:
            lag_ns = running_time_ns - self.sync_time_ns(self.loop_index, self.frame_index)
            if lag_ns > MAX_LAG_NS:
                self.skip_to_keyframe_at(running_time_ns)
                log.info(
                    "mount %s: stream was %.1f s behind the clock, so it skipped ahead to a "
                    "keyframe. Pausing the server with SIGSTOP causes this.",
                    self.mount, lag_ns / Gst.SECOND,
                )

        buffer = self.shifted_buffer(self.loop_index, self.frame_index)
        self.frame_index += 1
        if self.frame_index == len(self.clip.buffers):
            self.frame_index = 0
            self.loop_index += 1
            log.debug("mount %s: starting loop %d", self.mount, self.loop_index + 1)
        return buffer

    def sync_time_ns(self, loop_index, frame_index):
        return self.clip.sync_times_ns[frame_index] + loop_index * self.clip.duration_ns

    def skip_to_keyframe_at(self, running_time_ns):
        """Move to the first keyframe whose sync time is not earlier than `running_time_ns`."""
        loop_index = self.loop_index
        while True:
            for frame_index in self.clip.keyframe_indices:
                is_ahead = (loop_index, frame_index) >= (self.loop_index, self.frame_index)
                if is_ahead and self.sync_time_ns(loop_index, frame_index) >= running_time_ns:
                    self.loop_index = loop_index
                    self.frame_index = frame_index
                    return
            loop_index += 1

    def shifted_buffer(self, loop_index, frame_index):
        return shift_buffer(self.clip.buffers[frame_index], loop_index * self.clip.duration_ns)


def element_running_time_ns(element):
    """Return the element's running time, or None unless it is PLAYING."""
    clock = element.get_clock()
    _, state, _ = element.get_state(0)
    if clock is None or state != Gst.State.PLAYING:
        return None
    return clock.get_time() - element.get_base_time()


def check_elements():
    missing = [name for name in REQUIRED_ELEMENTS if Gst.ElementFactory.find(name) is None]
    if missing:
        raise SystemExit(
            f"rtsp_server: GStreamer elements not found: {', '.join(missing)}. "
            "Run scripts/install-rtsp.sh to install them."
        )


def make_element(factory_name, name=None, **properties):
    element = Gst.ElementFactory.make(factory_name, name)
    if element is None:
        raise SystemExit(
            f"rtsp_server: GStreamer element {factory_name!r} not found. "
            "Run scripts/install-rtsp.sh to install it."
        )
    for key, value in properties.items():
        element.set_property(key.replace("_", "-"), value)
    return element


def parse_mount(text):
    path, sep, file = text.partition("=")
    if not sep or not path.startswith("/") or len(path) < 2 or not file:
        raise argparse.ArgumentTypeError(f"invalid mount {text!r}, expected /PATH=FILE")
    if not os.path.isfile(file):
        raise argparse.ArgumentTypeError(f"file not found for mount {path}: {file}")
    return path, os.path.abspath(file)


def parse_protocols(text):
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = sorted(set(names) - set(LOWER_TRANSPORTS))
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"invalid protocols {text!r}, expected a comma-separated list of tcp and udp"
        )
    protocols = GstRtsp.RTSPLowerTrans(0)
    for name in names:
        protocols |= LOWER_TRANSPORTS[name]
    return protocols


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--port", type=int, required=True,
        help="TCP port for RTSP on 127.0.0.1. With 0 the kernel chooses, and READY shows the port",
    )
    parser.add_argument(
        "--mount", type=parse_mount, action="append", required=True, metavar="/PATH=FILE",
        help="serve FILE at rtsp://127.0.0.1:PORT/PATH, repeat for more mounts",
    )
    parser.add_argument("--user", help="require RTSP basic auth with this user name")
    parser.add_argument("--password", help="password for --user")
    parser.add_argument(
        "--protocols", type=parse_protocols, default=parse_protocols("tcp,udp"),
        help="lower transports that clients may use, comma-separated (default: tcp,udp)",
    )
    parser.add_argument(
        "--exit-on-stdin-eof", action="store_true",
        help="exit when stdin closes, so the server dies with the process that started it",
    )
    parser.add_argument(
        "--load-timeout-s", type=float, default=120.0,
        help="maximum seconds to demux, and if needed re-encode, each file at start-up",
    )
    parser.add_argument(
        "--verbose", action="store_true", help="also log each client's every loop over its file"
    )
    args = parser.parse_args(argv)

    if (args.user is None) != (args.password is None):
        parser.error("--user and --password must be given together")
    mounts = [path for path, _ in args.mount]
    if len(set(mounts)) != len(mounts):
        parser.error(f"each mount path may appear only once, got {mounts}")
    return args


def build_server(args):
    server = GstRtspServer.RTSPServer()
    server.set_address(HOST)
    server.set_service(str(args.port))

    # Without an address pool, the UDP sockets for RTP and RTCP bind to 0.0.0.0 and ::.
    # A unicast pool of 127.0.0.1 keeps them on loopback, like the RTSP socket.
    udp_pool = GstRtspServer.RTSPAddressPool()
    if not udp_pool.add_range(HOST, HOST, UDP_PORT_MIN, UDP_PORT_MAX, 0):
        raise SystemExit(f"rtsp_server: cannot create the UDP address pool on {HOST}")

    mounts = server.get_mount_points()
    for path, file in args.mount:
        factory = LoopingClipFactory(path, load_clip(file, args.load_timeout_s))
        factory.set_shared(False)
        factory.set_protocols(args.protocols)
        factory.set_address_pool(udp_pool)
        if args.user is not None:
            factory.set_permissions(build_permissions())
        mounts.add_factory(path, factory)

    if args.user is not None:
        server.set_auth(build_basic_auth(args.user, args.password))
    server.connect("client-connected", log_client)
    return server


def build_basic_auth(user, password):
    token = GstRtspServer.RTSPToken()
    token.set_string(GstRtspServer.RTSP_TOKEN_MEDIA_FACTORY_ROLE, ROLE)
    auth = GstRtspServer.RTSPAuth()
    auth.add_basic(GstRtspServer.RTSPAuth.make_basic(user, password), token)
    return auth


def build_permissions():
    permissions = GstRtspServer.RTSPPermissions()
    permissions.add_permission_for_role(ROLE, GstRtspServer.RTSP_PERM_MEDIA_FACTORY_ACCESS, True)
    permissions.add_permission_for_role(ROLE, GstRtspServer.RTSP_PERM_MEDIA_FACTORY_CONSTRUCT, True)
    return permissions


def log_client(server, client):
    address = client.get_connection().get_ip()
    log.info("client connected from %s", address)
    client.connect("closed", lambda _client: log.info("client from %s disconnected", address))


def quit_loop(loop, reason):
    log.info("stopping: %s", reason)
    loop.quit()
    return GLib.SOURCE_REMOVE


def watch_stdin(loop):
    def on_stdin(fd, _condition):
        # The starter never writes to stdin, so any readable state means it closed the pipe.
        if os.read(fd, 4096):
            return GLib.SOURCE_CONTINUE
        return quit_loop(loop, "stdin closed")

    GLib.unix_fd_add_full(
        GLib.PRIORITY_DEFAULT, sys.stdin.fileno(), GLib.IOCondition.IN | GLib.IOCondition.HUP,
        on_stdin,
    )


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    Gst.init(None)
    check_elements()

    loop = GLib.MainLoop()
    server = build_server(args)
    # attach() binds with SO_REUSEADDR (rtsp-server.c passes allow_reuse=TRUE to
    # g_socket_bind), so a restart right after SIGKILL gets the same port even while
    # connections of the killed server linger in TIME_WAIT.
    if server.attach(None) == 0:
        log.error(
            "cannot listen on %s:%d, probably because another process uses the port. "
            "Choose another --port or stop that process.",
            HOST, args.port,
        )
        return 1

    for signum in (signal.SIGTERM, signal.SIGINT):
        name = signal.Signals(signum).name
        GLib.unix_signal_add(GLib.PRIORITY_HIGH, signum, quit_loop, loop, name)
    if args.exit_on_stdin_eof:
        watch_stdin(loop)

    port = server.get_bound_port()
    log.info(
        "listening on %s:%d, mounts %s, auth %s",
        HOST, port, ", ".join(path for path, _ in args.mount),
        "on" if args.user is not None else "off",
    )
    print(f"READY rtsp://{HOST}:{port}", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
