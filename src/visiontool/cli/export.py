"""`visiontool export MODEL --runtime openvino|onnx -o DIR`: a deployable exported model."""
from __future__ import annotations

import typer

from visiontool.cli.options import QuietOpt

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)


@app.command("export")
def export_command(
    model: str = typer.Argument(..., metavar="MODEL",
                                help="A detection model spec: a Hugging Face id or directory (the DETR family, "
                                     "OWL-ViT / OWLv2, Grounding DINO, OmDet-Turbo, EoMT, Mask2Former, "
                                     "MaskFormer), torchvision:NAME[:FILE.pth], or ultralytics:NAME|PATH."),
    runtime: str = typer.Option(..., "--runtime", metavar="RUNTIME", help="openvino | onnx"),
    output: str = typer.Option(..., "--output", "-o", metavar="DIR",
                               help="The directory to write (new, or empty); complete or absent, never half."),
    image_size: list[str] = typer.Option(
        [], "--image-size", metavar="HxW",
        help="For a model exported once per processed size (Deformable DETR, Grounding DINO, Mask2Former-like "
             "models whose processor keeps the aspect ratio): the size of the images it will see, height x "
             "width before processing, e.g. 1080x1920; repeatable. DIR holds one network per processed size."),
    quiet: bool = QuietOpt,
) -> None:
    """Export a detection model's network to OpenVINO IR or ONNX (float32, dynamic image
    size) with a manifest (class names, preprocessing, source, visiontool version);
    `visiontool detect --model DIR` runs it again with the same records, without the source
    model. The DETR family exports whole; torchvision detectors export their backbone (DIR
    also holds the heads' weights, which run in torch); Ultralytics models are exported by
    Ultralytics' own exporter and still predict through Ultralytics (extra [yolo]). OWL-ViT
    and OWLv2, Grounding DINO and OmDet-Turbo export with their processor and tokenizer,
    phrases as an input: `--model DIR` then needs `--text`. Families exported once per
    processed image size (Deformable DETR, Grounding DINO, Mask2Former-like models) need
    `--image-size` for every image size they will see; DIR then refuses other sizes.

    Example: visiontool export facebook/detr-resnet-50 --runtime openvino -o detr-ov/

    Exit codes: 0 success; 1 the export failed; 2 bad arguments, a model family without an
    exporter, or a missing extra (the install line).
    """
    from visiontool.models.runtimes.deploy import check_runtime, check_target, export_model, parse_image_size
    from visiontool.render.console import set_quiet

    set_quiet(quiet)
    check_runtime(runtime)
    sizes = [parse_image_size(s) for s in image_size]
    check_target(output)
    export_model(model, runtime, output, quiet=quiet, image_sizes=sizes)
