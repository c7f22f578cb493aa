"""The result of an evaluation: per-case table, summary statistics, and their files (CSV, JSON, markdown, ...).

Per structure: mean, sample std (ddof 1), median and n of the non-NaN per-case values. Overall: the mean of the
structure means (the number protocols publish), with std and median over the per-case means across structures.
A structure no reference contains is not scored (NaN per case, ``not scored`` in the table, named in the notes),
so it neither raises nor lowers the overall mean.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["FORMATS", "Evaluation", "atomic_write_text", "summarize"]

#: Output formats and the file each writes.
FORMATS = {
    "csv": "metrics.csv",
    "tsv": "metrics.tsv",
    "json": "summary.json",
    "md": "summary.md",
    "html": "summary.html",
    "latex": "summary.tex",
}


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder: never a half-written file."""
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False) as handle:
        handle.write(text)
    os.replace(handle.name, path)


def _stats(values: pd.Series) -> dict[str, float | int]:
    """mean, sample std (ddof 1), median and n of the non-NaN values (an inf value makes the std NaN)."""
    present = values.dropna()
    with np.errstate(invalid="ignore"):  # inf − inf in the std: undefined, NaN
        std = float(present.std(ddof=1)) if len(present) > 1 else math.nan
    return {
        "mean": float(present.mean()) if len(present) else math.nan,
        "std": std,
        "median": float(present.median()) if len(present) else math.nan,
        "n": len(present),
    }


def summarize(table: pd.DataFrame, columns: Sequence[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Per structure: stats of every column; overall: mean of the scored structure means, std/median of case means."""
    ordered = table.sort_values(["label", "case"], kind="stable")
    per_structure = {
        str(name): {c: _stats(group[c]) for c in columns} for name, group in ordered.groupby("structure", sort=False)
    }
    scores = [c for c in columns if c in table.columns and not c.startswith(("volume_", "area_"))]
    case_means = table.groupby("case")[scores].mean()
    overall = {}
    for c in scores:
        means = [per_structure[s][c]["mean"] for s in per_structure if not math.isnan(per_structure[s][c]["mean"])]
        # the protocol number (TransUNet: mean over organs of the organ means; nnU-Net: foreground_mean)
        overall[c] = {**_stats(case_means[c]), "mean": float(np.mean(means)) if means else math.nan}
    return per_structure, overall


def _json_ready(value: Any) -> Any:
    """NaN → None, ±inf → ``"inf"`` / ``"-inf"`` (JSON has neither), recursively."""
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_ready(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value


@dataclass
class Evaluation:
    """An evaluation: the per-case ``table``, its ``summary`` and the metric columns."""

    table: pd.DataFrame
    summary: dict[str, Any]
    metric_columns: list[str]

    def summary_table(self) -> pd.DataFrame:
        """Structures (then ``overall``) × metrics as ``mean ± std`` strings (cityscapes: pooled IoU)."""
        if self.summary["convention"]["name"] == "cityscapes":
            rows = {name: {"IoU": f"{s['iou']:.4f}"} for name, s in self.summary["per_structure"].items()}
            rows["mean (mIoU)"] = {"IoU": f"{self.summary['overall']['miou']:.4f}"}
            return pd.DataFrame.from_dict(rows, orient="index").rename_axis("class")
        not_scored = self.summary.get("not_scored", {})

        def cell(name: str, stat: dict[str, Any]) -> str:
            mean, std = stat["mean"], stat["std"]
            if name in not_scored:
                return "not scored"
            if mean is None or (isinstance(mean, float) and math.isnan(mean)):
                return "n/a"
            return f"{mean:.4f}" if std is None or math.isnan(std) else f"{mean:.4f} ± {std:.4f}"

        groups = {**self.summary["per_structure"], "overall": self.summary["overall"]}
        return pd.DataFrame.from_dict(
            {name: {c: cell(name, stats[c]) for c in self.metric_columns} for name, stats in groups.items()},
            orient="index",
        ).rename_axis("structure")

    def notes(self) -> list[str]:
        """What a reader must know besides the numbers: unscored structures, resampled or missing predictions."""
        summary = self.summary
        notes = [f"Not scored: {name}: {text}" for name, text in summary.get("not_scored", {}).items()]
        if summary.get("missing"):
            notes.append(f"Predictions missing (scored as empty): {', '.join(summary['missing'])}.")
        if summary.get("unpredicted_references"):
            names = ", ".join(summary["unpredicted_references"])
            notes.append(f"References without prediction, left out (--only-predicted): {names}.")
        for case, text in summary.get("resampled", {}).items():
            notes.append(f"Case {case}: prediction resampled onto the reference grid (nearest neighbour): {text}.")
        space = summary.get("reference_space") or {}
        if space.get("mode") == "raw":
            notes.append(f"References mapped to the scored labels by the bundle's label_mapping ({space['why']}).")
        if space.get("fit_both"):
            notes.append(
                f"References fitting both label spaces, read as {space['mode']}: {', '.join(space['fit_both'])}."
            )
        return notes

    def markdown(self) -> str:
        """The summary table with the conventions it was computed under, as markdown."""
        convention = self.summary["convention"]
        lines = [
            f"# Evaluation: {convention['name']} convention",
            "",
            self.summary_table().to_markdown(),
            "",
            f"{self.summary['n_cases']} cases.",
        ]
        notes = self.notes()
        if notes:
            lines += ["", "## Notes", "", *[f"- {note}" for note in notes]]
        lines += ["", "## Conventions", "", f"- {convention['description']}"]
        if "label_space" in self.summary:
            lines.append(f"- Labels: {self.summary['label_space']['source']}.")
        if convention["name"] != "cityscapes":
            lines.append(
                "- Cells: mean ± sample std over cases; overall: mean of the structure means ± std over cases."
            )
            lines.append(f"- HD95: {convention['hd95']}.")
            lines.append(f"- Surface: {convention['surface']}; distances in {convention['distance_unit']}.")
            for case, policy in convention["empty_policy"].items():
                text = ", ".join(f"{k} = {v}" for k, v in policy.items())
                lines.append(f"- {case.replace('_', ' ')}: {text}.")
            lines.append(f"- A structure that no reference contains: {convention['absent_structures']}.")
            for unit in ("mm", "voxels"):
                if f"nsd_tolerance_{unit}" in convention:
                    lines.append(f"- NSD tolerance: {convention[f'nsd_tolerance_{unit}']} {unit}.")
            lines.append(f"- {convention['background'].capitalize()}.")
        return "\n".join(lines) + "\n"

    def write(self, output_dir: str | Path, formats: Sequence[str] = ("csv", "json", "md")) -> list[Path]:
        """Write the requested formats (:data:`FORMATS`) into ``output_dir``, each atomically; returns the files."""
        unknown = sorted(set(formats) - set(FORMATS))
        if unknown:
            raise ValueError(f"unknown formats {unknown}; choose from {sorted(FORMATS)}")
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for fmt in dict.fromkeys(formats):
            path = output_dir / FORMATS[fmt]
            if fmt in ("csv", "tsv"):
                text = self.table.to_csv(index=False, sep="," if fmt == "csv" else "\t")
            elif fmt == "json":
                text = json.dumps(_json_ready(self.summary), indent=2) + "\n"
            elif fmt == "md":
                text = self.markdown()
            elif fmt == "html":
                text = self.summary_table().to_html()
            else:
                text = self.summary_table().to_latex()
            atomic_write_text(path, text)
            written.append(path)
        return written
