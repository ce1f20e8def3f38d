"""The benchmark's printed table and its JSON record."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def format_report(data: dict[str, Any]) -> str:
    """Render the measurements as plain-text tables."""
    lines = _header(data)
    lines += _raw_sweep(data["raw_sweep"])
    lines += _pipeline_layouts(data["pipeline_layouts"])
    lines += _summary(data)
    lines += _latency(data["latency"], data["pipeline_defaults"])
    lines += _buckets(data)
    return "\n".join(lines)


def _header(data: dict[str, Any]) -> list[str]:
    machine, clip = data["machine"], data["clip"]
    return [
        f"vistream benchmark, {data['started_at']}",
        f"machine: {machine['cpu_model']}, {machine['usable_cpus']} usable CPUs, load average "
        f"{machine['load_average_before'][0]:.2f} before and {machine['load_average_after'][0]:.2f} after",
        f"model: {data['model']['name']} {data['model']['version']} on {data['model']['provider']}, "
        f"onnxruntime {machine['onnxruntime']}",
        f"clip: {Path(clip['path']).name}, {clip['frames']} frames of {clip['width']}x{clip['height']}, "
        f"decoded at {clip['decode_fps']:.0f} frames/s by one thread",
        "",
    ]


def _raw_sweep(rows: list[dict[str, Any]]) -> list[str]:
    batches = sorted({row["batch"] for row in rows})
    layouts = list(dict.fromkeys(row["layout"] for row in rows))
    rates = {(row["layout"], row["batch"]): row["frames_per_s"] for row in rows}
    width = max(len(layout) for layout in layouts) + 2
    lines = ["(a) raw onnxruntime on prepared tensors, frames/s", "layout".ljust(width) + "".join(f"batch {b:<4}" for b in batches)]
    for layout in layouts:
        lines.append(layout.ljust(width) + "".join(f"{rates[(layout, b)]:<10.1f}" for b in batches))
    return lines + [""]


def _pipeline_layouts(rows: list[dict[str, Any]]) -> list[str]:
    width = max(len(row["layout"]) for row in rows) + 2
    lines = [
        f"(b) vistream pipeline, decoded frames to results, max_batch_size {rows[0]['max_batch_size']}",
        "layout".ljust(width) + "frames/s  mean batch  preprocessing share",
    ]
    for row in rows:
        lines.append(
            row["layout"].ljust(width)
            + f"{row['frames_per_s']:<10.1f}{row['mean_batch']:<12.1f}{row['preprocess_share']:.1%}"
        )
    return lines + [""]


def _summary(data: dict[str, Any]) -> list[str]:
    head, ratios = data["head_to_head"], data["ratios"]
    rows = [
        (f"(a) raw onnxruntime, best: {_settings(head['raw'])}", head["raw"]["frames_per_s"]),
        ("(a) with preprocessing from decoded frames in each worker", head["raw_with_preprocessing"]["frames_per_s"]),
        (f"(b) vistream pipeline, best: {_settings(head['pipeline'])}", head["pipeline"]["frames_per_s"]),
        ("(b) vistream pipeline, settings of (a)", head["pipeline_like_raw"]["frames_per_s"]),
        (_defaults_name(data["pipeline_defaults"]), data["pipeline_defaults"]["frames_per_s"]),
        ("(c) naive loop: preprocess, batch 1, serialise", data["naive"]["frames_per_s"]),
        (f"full path with decoding, {data['full_path']['cameras']} cameras, default settings",
         data["full_path"]["frames_per_s"]),
    ]
    cpu = {
        0: head["raw"]["cpu_ms_per_frame"],
        1: head["raw_with_preprocessing"]["cpu_ms_per_frame"],
        2: head["pipeline"]["cpu_ms_per_frame"],
        3: head["pipeline_like_raw"]["cpu_ms_per_frame"],
        4: data["pipeline_defaults"]["cpu_ms_per_frame"],
        5: data["naive"]["cpu_ms_per_frame"],
    }
    width = max(len(name) for name, _ in rows) + 2
    raw = head["raw"]["frames_per_s"]
    lines = [f"summary, best of {len(head['raw']['rounds'])} rounds each; the first four rows alternate"]
    lines.append("measurement".ljust(width) + "frames/s  of (a)  CPU ms/frame")
    for index, (name, rate) in enumerate(rows):
        cpu_text = f"{cpu[index]:.2f}" if index in cpu else ""
        lines.append(name.ljust(width) + f"{rate:<10.1f}{rate / raw:<7.0%}{cpu_text}")
    lines.append(
        f"ratios: (b)/(a) {ratios['pipeline_over_raw']:.2f}, "
        f"(b)/(a with preprocessing) {ratios['pipeline_over_raw_with_preprocessing']:.2f}, "
        f"(b)/(a) in frames per CPU-second {ratios['pipeline_cpu_efficiency_of_raw']:.2f}, "
        f"(b)/(c) {ratios['pipeline_over_naive']:.2f}, "
        f"(a)/(c) {ratios['raw_over_naive']:.2f}, full path/(b defaults) {ratios['full_path_over_pipeline']:.2f}"
    )
    return lines + [""]


def _settings(row: dict[str, Any]) -> str:
    return f"{row['layout']}, batch {row['batch']}"


def _defaults_name(defaults: dict[str, Any]) -> str:
    sessions = "own sessions" if defaults["session_per_worker"] else "shared session"
    threads = defaults["intra_op_threads"]
    return (
        f"(b) vistream pipeline, defaults: {defaults['workers']} workers, {sessions}, "
        f"{threads} thread{'s' if threads > 1 else ''} each, batch {defaults['max_batch_size']}"
    )


def _latency(rows: list[dict[str, Any]], defaults: dict[str, Any]) -> list[str]:
    lines = [
        "capture-to-result latency at default settings, paced input to live cameras at up to 25 frames/s each;",
        f"load is relative to {defaults['sustained_frames_per_s']:.1f} frames/s, the median of "
        f"{defaults['sustained_readings']} readings of the default settings",
        "load   frames/s  cameras  p50 ms   p99 ms   results  dropped  mean batch",
    ]
    for row in rows:
        lines.append(
            f"{row['load']:<7.0%}{row['rate_fps']:<10.1f}{row['cameras']:<9d}{row['p50_ms']:<9.1f}{row['p99_ms']:<9.1f}"
            f"{row['results']:<9d}{row['dropped']:<9d}{row['mean_batch']:.1f}"
        )
    return lines


def _buckets(data: dict[str, Any]) -> list[str]:
    runs = [("full path", data["full_path"]["histogram_buckets"])]
    runs += [(f"latency {row['load']:.0%}", row["histogram_buckets"]) for row in data["latency"]]
    lines = ["", "histogram buckets (lower, upper] that contain p50 and p99, in the metrics' units"]
    for run, buckets in runs:
        for name, quantiles in sorted(buckets.items()):
            lines.append(
                f"{run:<13}{name.removeprefix('vistream_'):<40}"
                f"p50 {_interval(quantiles['p50']):<16}p99 {_interval(quantiles['p99'])}"
            )
    return lines


def _interval(bounds: list[float]) -> str:
    return f"({bounds[0]:g}, {bounds[1]:g}]"


def write_json(data: dict[str, Any], folder: Path) -> Path:
    """Write the record to FOLDER/bench-<time>.json and return its path."""
    folder.mkdir(parents=True, exist_ok=True)
    stamp = data["started_at"].replace(":", "").replace("-", "")
    path = folder / f"bench-{stamp}.json"
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return path
