"""Writing a folder-scoring result as JSON (every row and problem) and as a markdown summary table."""
from __future__ import annotations

import json
import math
import os


def _json_safe(value):
    """Non-finite floats (the +inf PSNR of an exact match) as the strings "inf" / "-inf" / "nan"."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def to_markdown(results: dict) -> str:
    """A summary: the scored count, one row per metric, then every file that was not scored and why."""
    lines = [f"# {results['pred_dir']} vs {results['target_dir']}", "",
             f"{results['count']} image pairs scored; {len(results['problems'])} files not scored.", "",
             "| metric | value |", "|---|---|"]
    lines += [f"| {metric} (mean per image) | {value:.6g} |" for metric, value in results["means"].items()]
    for metric, value in results["set_metrics"].items():
        shown = f"{value['mean']:.6g} ± {value['std']:.3g}" if isinstance(value, dict) else f"{value:.6g}"
        lines.append(f"| {metric} | {shown} |")
    if results["problems"]:
        lines += ["", "## Not scored", "", "| file | reason |", "|---|---|"]
        lines += [f"| {p['path']} | {p['reason']} |" for p in results["problems"]]
    return "\n".join(lines) + "\n"


def write_report(results: dict, json_path: str) -> str:
    """Writes `json_path` and the markdown table beside it (same name, `.md`); returns the markdown path."""
    directory = os.path.dirname(os.path.abspath(json_path))
    os.makedirs(directory, exist_ok=True)
    with open(json_path, "w") as f:
        json.dump(_json_safe(results), f, indent=2)
        f.write("\n")
    markdown_path = os.path.splitext(json_path)[0] + ".md"
    with open(markdown_path, "w") as f:
        f.write(to_markdown(results))
    return markdown_path
