#!/usr/bin/env bash
# Install the Debian packages that tests/support/rtsp_server.py needs: the GStreamer
# RTSP server, its GObject introspection data, python3-gi for Debian's /usr/bin/python3,
# and the plugins that demux, parse, re-encode and pay video into RTP.
# Safe to run again: when the imports and every element already work, it installs nothing.
set -euo pipefail

readonly SYSTEM_PYTHON=/usr/bin/python3
readonly PACKAGES=(
    python3-gi
    gir1.2-glib-2.0
    gir1.2-gstreamer-1.0
    gir1.2-gst-plugins-base-1.0
    gir1.2-gst-rtsp-server-1.0
    gstreamer1.0-tools
    gstreamer1.0-plugins-base
    gstreamer1.0-plugins-good
    gstreamer1.0-plugins-bad
    gstreamer1.0-plugins-ugly
    gstreamer1.0-libav
    gstreamer1.0-rtsp
)
# The elements that tests/support/rtsp_server.py creates, plus the MP4 demuxer. filesrc comes
# from the core; parsebin, decodebin, appsrc, appsink and videoconvert from plugins-base;
# qtdemux and rtph264pay from plugins-good; h264parse from plugins-bad; x264enc from
# plugins-ugly. gstreamer1.0-libav adds decoders for codecs that the server re-encodes.
readonly ELEMENTS=(
    filesrc parsebin decodebin appsrc appsink videoconvert
    qtdemux rtph264pay h264parse x264enc
)

# Check that the system Python imports the bindings and finds every element. On failure,
# print the reason to stderr and return non-zero.
rtsp_server_works() {
    if [[ ! -x "$SYSTEM_PYTHON" ]]; then
        echo "install-rtsp: $SYSTEM_PYTHON not found" >&2
        return 1
    fi
    "$SYSTEM_PYTHON" - "${ELEMENTS[@]}" <<'PY'
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstApp", "1.0")
gi.require_version("GstRtsp", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import Gst, GstApp, GstRtsp, GstRtspServer  # noqa: F401

Gst.init(None)
missing = [name for name in sys.argv[1:] if Gst.ElementFactory.find(name) is None]
if missing:
    sys.exit(f"install-rtsp: GStreamer elements not found: {' '.join(missing)}")
PY
}

if rtsp_server_works 2>/dev/null; then
    echo "install-rtsp: GStreamer RTSP server already usable from $SYSTEM_PYTHON"
    exit 0
fi

if [[ $EUID -ne 0 ]]; then
    echo "install-rtsp: packages are missing and installing them needs root;" \
        "run this script as root or with sudo" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends "${PACKAGES[@]}"

if ! rtsp_server_works; then
    echo "install-rtsp: packages are installed, but the check above still fails" >&2
    exit 1
fi
echo "install-rtsp: GStreamer RTSP server is now usable from $SYSTEM_PYTHON"
