"""`visiontool env`: versions, devices, the dtype auto picks, and the caches used."""
from __future__ import annotations

import json
import os
import platform
from typing import Optional

import typer

from visiontool.cli.options import OutputOpt, choose_format, format_option

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)

_PACKAGES = ("visiontool", "torch", "torchvision", "transformers", "timm", "huggingface_hub",
             "segment_anything", "pycocotools", "ultrafast_pycocotools", "torchmetrics", "numpy", "PIL",
             "typer", "rich")


def collect_env() -> dict:
    from importlib import metadata

    dist_names = {"PIL": "pillow", "segment_anything": "segment-anything",
                  "ultrafast_pycocotools": "ultrafast-pycocotools", "huggingface_hub": "huggingface_hub"}
    versions = {"python": platform.python_version()}
    for mod in _PACKAGES:
        try:
            versions[mod] = metadata.version(dist_names.get(mod, mod))
        except metadata.PackageNotFoundError:
            versions[mod] = None
    from visiontool.device import auto_summary

    info = {"versions": versions, "platform": platform.platform(), "machine": platform.machine(),
            "cpu_count": os.cpu_count()}
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        info["cuda_available"] = torch.cuda.is_available()
        info["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        info.update(auto_summary())
    except Exception as exc:  # torch broken: still report the rest
        info["torch_error"] = str(exc)
    from visiontool.models.cache import cache_dirs

    info["caches"] = cache_dirs()
    info["offline"] = bool(os.environ.get("HF_HUB_OFFLINE") or os.environ.get("VISIONTOOL_OFFLINE"))
    return info


@app.command("env")
def env_command(
    fmt: Optional[str] = format_option(("table", "json"), "json"),
    output: Optional[str] = OutputOpt,
) -> None:
    """Print versions, the devices seen, the dtype `auto` would pick, and the caches used."""
    from visiontool.io.output import check_output_file, open_output

    fmt = choose_format(fmt, output, ("table", "json"))
    check_output_file(output, "--output")
    info = collect_env()
    if fmt == "json":
        with open_output(output) as fh:
            fh.write(json.dumps(info, indent=2) + "\n")
        return
    from rich.table import Table

    from visiontool.render.console import print_tables

    t = Table(title="visiontool env", show_header=False)
    t.add_column("key", style="bold")
    t.add_column("value")
    for k, v in info["versions"].items():
        t.add_row(k, v or "not installed")
    for k in ("platform", "machine", "cpu_count", "torch_threads", "cpu_capability", "available", "device",
              "dtype", "offline"):
        if k in info:
            v = info[k]
            t.add_row({"device": "device (auto)", "dtype": "dtype (auto)",
                       "available": "devices"}.get(k, k), ", ".join(v) if isinstance(v, list) else str(v))
    for k, v in info["caches"].items():
        t.add_row(f"cache: {k}", v)
    with open_output(output) as fh:
        print_tables(fh, t)
