"""The model (ML engineers): train, train-bundle, calibrate, evaluate, predict, package-model,
model-card."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel
from tqdm import tqdm

from pneumonode.cli.common import (
    EXIT_OK,
    CliError,
    CommandGroup,
    load_predictor,
    verdict,
    write_predictions,
)

if TYPE_CHECKING:
    from pneumonode.config import Settings
    from pneumonode.model.data import Sample
    from pneumonode.model.predictor import Predictor

__all__ = ["add_commands"]

Options = TypeVar("Options", bound=BaseModel)


def add_commands(group: CommandGroup) -> None:
    from pneumonode.model.train_config import FastTrainConfig, TrainConfig

    train = group.add(
        "train",
        _cmd_train,
        help="train the U-Net on png_images/ + png_masks/ (or images/ + masks/)",
        description="Train with BCE + focal Dice, Adam, warm-up, ReduceLROnPlateau and early "
        "stopping; writes best/ (checkpoint), last.pt, metrics.csv, curves.png, "
        "val_samples.png and split.json into --out. --resume continues from last.pt.",
    )
    train.add_argument("--data", type=Path, required=True)
    train.add_argument("--out", type=Path, required=True)
    train.add_argument("--resume", action="store_true")
    train.add_argument("--no-progress", action="store_true")
    _add_option_flags(train, TrainConfig, skip=("data", "out"))

    fit = group.add(
        "train-bundle",
        _cmd_train_bundle,
        help="train the triage model (U-Net + image-level head) on a training bundle",
        description="Positives and negatives drawn by a weighted sampler, augmented on the "
        "device, BCE + Dice (positives) + BCE on the image label, AdamW with a cosine schedule "
        "(over --time-limit minutes when given), a moving average of the weights. Writes "
        "best/, last/, metrics.csv, curves.png and log.txt into --out. Then: pneumonode "
        "calibrate.",
    )
    fit.add_argument("--bundle", type=Path, required=True)
    fit.add_argument("--out", type=Path, required=True)
    fit.add_argument("--no-progress", action="store_true")
    _add_option_flags(fit, FastTrainConfig, skip=("bundle", "out"))

    calibrate = group.add(
        "calibrate",
        _cmd_calibrate,
        help="fit the probability calibration and the operating point on the validation split",
        description="Runs the model on the validation films of --split and writes into the "
        "checkpoint's config.json: the image score (head or top pixel, the better ranking), "
        "its Platt scaling, the operating point (sensitivity >= --min-sensitivity, then the "
        "best specificity) and the pixel threshold, growing (hysteresis) and minimum area "
        "with the best Dice.",
    )
    calibrate.add_argument("--weights", type=Path, required=True)
    calibrate.add_argument("--data", type=Path, action="append", required=True)
    calibrate.add_argument("--split", type=Path, required=True)
    calibrate.add_argument("--min-sensitivity", type=float, default=0.9)
    calibrate.add_argument("--score", choices=("auto", "head", "max_pixel"), default="auto")
    calibrate.add_argument("--method", choices=("platt", "temperature"), default="platt")
    calibrate.add_argument(
        "--flip-average",
        choices=("auto", "on", "off"),
        default="auto",
        help="average each film with its mirror image at inference (twice the time): auto "
        "chooses it when it raises validation AUC + Dice; default auto",
    )
    calibrate.add_argument("--no-progress", action="store_true")

    evaluate = group.add(
        "evaluate",
        _cmd_evaluate,
        help="how good a checkpoint is: ROC, sensitivity/specificity, Dice, calibration",
        description="A calibrated model (pneumonode calibrate) on films of both classes: "
        "evaluation.json/.csv, roc.png, reliability.png, worst_cases.png (sensitivity and "
        "specificity at the operating point with 95%% intervals, specificity on normal and "
        "abnormal films, Dice at the source's resolution, the SIIM score at 22%% prevalence). "
        "A model without an operating point: Dice/IoU/SIIM score; --tune searches threshold, "
        "minimum area and top-score gate and writes them into the checkpoint.",
    )
    evaluate.add_argument("--weights", type=Path, required=True)
    evaluate.add_argument("--data", type=Path, action="append", required=True, help="repeatable")
    evaluate.add_argument("--split", type=Path, help="a split.json")
    evaluate.add_argument("--subset", choices=("train", "validation", "test"), default="validation")
    evaluate.add_argument("--out", type=Path, help="default: <weights>/evaluation")
    evaluate.add_argument("--tune", action="store_true")
    evaluate.add_argument(
        "--tta",
        action="store_true",
        help="average with the mirror image even where the checkpoint does not",
    )
    evaluate.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default=None)
    evaluate.add_argument("--device", default=None)
    evaluate.add_argument(
        "--backend", choices=("auto", "torch", "onnxruntime", "openvino"), default=None
    )
    evaluate.add_argument("--no-progress", action="store_true")

    predict = group.add(
        "predict",
        _cmd_predict,
        help="segment pneumothorax on DICOM, PNG or JPEG files",
        description="Write <stem>_mask.png (0/255, the source's size) and <stem>_overlay.png "
        "for each file, and predictions.json with the findings. AI result, not for clinical use.",
    )
    predict.add_argument("files", nargs="+", type=Path, metavar="FILE")
    predict.add_argument(
        "--weights",
        type=Path,
        default=None,
        help="checkpoint folder or .pth (default: the configured model, PNEUMONODE_MODEL_PATH, "
        "else the shipped one)",
    )
    predict.add_argument("--out", type=Path, required=True, help="output folder")
    predict.add_argument("--tta", action="store_true", help="average with a horizontal flip")
    predict.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default=None)
    predict.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N")
    predict.add_argument(
        "--backend",
        choices=("auto", "torch", "onnxruntime", "openvino"),
        default=None,
        help="inference engine (default: PNEUMONODE_INFERENCE_BACKEND, auto)",
    )

    package = group.add(
        "package-model",
        _cmd_package_model,
        help="copy a checkpoint for deployment (fp16 weights, new version/name)",
        description="Writes a checkpoint folder (config.json + model.safetensors) with its "
        "post-processing, training summary and metrics; fp16 halves the size.",
    )
    package.add_argument("--weights", type=Path, required=True)
    package.add_argument("--out", type=Path, required=True)
    package.add_argument("--dtype", choices=("float16", "float32"), default="float16")
    package.add_argument("--version", default=None, help="default: the checkpoint's")
    package.add_argument("--name", default=None, help="default: the checkpoint's")
    package.add_argument(
        "--average-with",
        type=Path,
        action="append",
        default=[],
        metavar="CHECKPOINT",
        help="average the weights with this checkpoint's (same architecture; repeatable), e.g. "
        "the weights a run started from; the encoder's BatchNorm is folded in each first, so "
        "checkpoints of folded and plain runs average correctly. Recalibrate afterwards",
    )

    card = group.add(
        "model-card",
        _cmd_model_card,
        help="refresh a model card's measured tables from the measurements",
        description="Copies the summary of `pneumonode evaluate --subset test` (evaluation.json) "
        "and the predictions on the SIIM sample DICOMs into the model folder, then rewrites the "
        "tables between <!-- measured: NAME --> markers in its MODEL_CARD.md (calibration, test, "
        "siim); the prose around them is left alone.",
    )
    card.add_argument("--weights", type=Path, required=True, help="the model folder")
    card.add_argument("--evaluation", type=Path, help="an evaluate --out folder (test split)")
    card.add_argument("--siim-sample", type=Path, help="a folder with dicom/ and masks/")


def _add_option_flags(
    parser: argparse.ArgumentParser, options: type[BaseModel], skip: tuple[str, ...]
) -> None:
    """One ``--flag`` per field of a training options model (booleans as --x/--no-x)."""
    for name, field_info in options.model_fields.items():
        if name in skip:
            continue
        flag = "--" + name.replace("_", "-")
        if field_info.annotation is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        else:
            help_text = f"{field_info.description}; " if field_info.description else ""
            parser.add_argument(flag, default=None, help=f"{help_text}default {field_info.default}")


def _options(options: type[Options], values: dict[str, Any]) -> Options:
    """``options(**values)``, or a :class:`CliError` naming the first invalid option."""
    from pydantic import ValidationError

    try:
        return options(**values)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = f"{error['loc'][0]}: " if error["loc"] else ""
        message = str(error["msg"]).removeprefix("Value error, ")
        raise CliError(f"invalid training option: {where}{message}") from None


def _cmd_train(settings: Settings, args: argparse.Namespace) -> int:
    from pneumonode.model.data import DatasetLayoutError
    from pneumonode.model.train import train
    from pneumonode.model.train_config import TrainConfig

    values = {
        name: getattr(args, name)
        for name in TrainConfig.model_fields
        if getattr(args, name, None) is not None
    }
    config = _options(TrainConfig, values)
    try:
        result = train(config, resume=args.resume, progress=not args.no_progress)
    except DatasetLayoutError as exc:
        raise CliError(str(exc)) from None
    if result.checkpoint is None:
        raise CliError("no epoch finished; nothing was saved")
    note = " (stopped early)" if result.stopped_early else ""
    print(f"best epoch {result.best_epoch}{note}, validation loss {result.best_val_loss:.4f}")
    print(f"checkpoint: {result.checkpoint}; curves: {config.out / 'curves.png'}")
    return EXIT_OK


def _cmd_train_bundle(settings: Settings, args: argparse.Namespace) -> int:
    from pneumonode.model.bundle import BundleError
    from pneumonode.model.fast_train import fast_train
    from pneumonode.model.train_config import FastTrainConfig

    values = {
        name: getattr(args, name)
        for name in FastTrainConfig.model_fields
        if getattr(args, name, None) is not None
    }
    if values.get("encoder_weights") in ("none", "None", ""):
        values["encoder_weights"] = None
    config = _options(FastTrainConfig, values)
    try:
        best = fast_train(config, progress=not args.no_progress)
    except (BundleError, ValueError) as exc:
        raise CliError(str(exc)) from None
    if "epoch" not in best:
        raise CliError("no epoch finished; nothing was saved")
    print(
        f"best epoch {best['epoch']}: validation AUC {best['val_auc']:.3f}, Dice (positives) "
        f"{best['val_dice_positives']:.3f}; {best['train_images_per_second']:.1f} images/s"
    )
    print(f"checkpoint: {config.out / 'best'}; curves: {config.out / 'curves.png'}")
    print(f"next: pneumonode calibrate --weights {config.out / 'best'} --split ... --data ...")
    return EXIT_OK


def _cohort_side(data: Sequence[Path], split: Path | None, subset: str) -> list[Sample]:
    from pneumonode.model.data import DatasetLayoutError, discover_cohort, read_split

    try:
        samples = discover_cohort(data)
        chosen = samples if split is None else read_split(split, samples)[subset]
    except (DatasetLayoutError, OSError) as exc:
        raise CliError(str(exc)) from None
    if not chosen:
        raise CliError(f"no {subset} images in {split}")
    return chosen


def _cmd_calibrate(settings: Settings, args: argparse.Namespace) -> int:
    from pneumonode.model.assess import calibrate
    from pneumonode.model.checkpoint import CheckpointError, PostProcessing
    from pneumonode.model.predictor import Predictor

    if not 0 < args.min_sensitivity < 1:
        raise CliError("--min-sensitivity must be between 0 and 1")
    samples = _cohort_side(args.data, args.split, "validation")
    try:
        predictor = Predictor.load(args.weights, backend="torch", precision="fp32")
    except (CheckpointError, ValueError) as exc:
        raise CliError(str(exc)) from None
    try:
        chosen = calibrate(
            predictor,
            samples,
            args.weights,
            min_sensitivity=args.min_sensitivity,
            score=args.score,
            method=args.method,
            flip_average=args.flip_average,
            progress=not args.no_progress,
        )
    except ValueError as exc:
        raise CliError(str(exc)) from None
    calibration, decision = chosen["calibration"], chosen["decision"]
    figures = calibration["fitted_on"]
    print(
        f"score: {calibration['score']} (validation AUC "
        + ", ".join(f"{k} {v:.3f}" for k, v in figures["auc"].items())
        + ")"
    )
    print(
        f"calibration: {calibration['method']} a={calibration['a']:.4f} b={calibration['b']:.4f}"
        f"; log loss {figures['log_loss_raw']:.4f} -> {figures['log_loss_calibrated']:.4f}"
    )
    print(
        f"operating point: probability >= {decision['threshold']:.4f}; validation sensitivity "
        f"{decision['validation']['sensitivity']:.3f}, specificity "
        f"{decision['validation']['specificity']:.3f}"
    )
    post = chosen["postprocess"]
    print(
        "mirror-image averaging: "
        + ("on" if post["flip_average"] else "off")
        + " (validation "
        + "; ".join(
            f"{name}: AUC {v['auc']:.3f}, Dice {v['dice']:.3f}"
            for name, v in chosen["flip_average"].items()
        )
        + ")"
    )
    print(
        f"region: {PostProcessing.model_validate(post).region_rule()}; "
        f"validation Dice (positives, model size) {chosen['validation_mean_dice_positives']:.3f}"
    )
    print(f"written into {args.weights}")
    return EXIT_OK


def _cmd_evaluate(settings: Settings, args: argparse.Namespace) -> int:
    from pneumonode.model.data import DatasetLayoutError
    from pneumonode.model.evaluate import evaluate, select_samples

    predictor = load_predictor(settings, args)
    if predictor.config.decision is not None:
        return _evaluate_cohort(predictor, args)
    if len(args.data) != 1:
        raise CliError("a model without an operating point is evaluated on one --data folder")
    try:
        samples = select_samples(args.data[0], args.split, args.subset)
    except (DatasetLayoutError, ValueError, OSError, KeyError) as exc:
        raise CliError(str(exc)) from None
    if not samples:
        raise CliError("no images to evaluate")
    folder = args.weights if args.weights.is_dir() else args.weights.parent
    out = args.out or folder / "evaluation"
    result = evaluate(
        predictor,
        samples,
        out,
        do_tune=args.tune,
        weights=args.weights,
        progress=not args.no_progress,
    )
    summary = result.summary
    for key in (
        "images",
        "positives",
        "negatives",
        "mean_dice_positives",
        "mean_iou_positives",
        "siim_score",
        "auc_max_probability",
        "sensitivity",
        "specificity",
    ):
        value = summary[key]
        print(f"{key:22} {value:.4f}" if isinstance(value, float) else f"{key:22} {value}")
    print(
        f"post-processing        {summary['postprocess']}{' (tuned, saved)' if args.tune else ''}"
    )
    print(f"written to {out}")
    return EXIT_OK


def _evaluate_cohort(predictor: Predictor, args: argparse.Namespace) -> int:
    from pneumonode.model.assess import evaluate_cohort

    if args.tune:
        raise CliError("--tune is for models without an operating point; use pneumonode calibrate")
    samples = _cohort_side(args.data, args.split, args.subset)
    folder = args.weights if args.weights.is_dir() else args.weights.parent
    out = args.out or folder / "evaluation"
    summary = evaluate_cohort(predictor, samples, out, progress=not args.no_progress)

    def ratio(entry: dict[str, Any]) -> str:
        low, high = entry["ci95"]
        return f"{entry['value']:.3f} (95% CI {low:.3f}-{high:.3f}, n={entry['n']})"

    print(f"images                 {summary['images']} ({summary['positives']} positive)")
    print(f"AUC                    {summary['auc']:.4f}")
    print(f"operating point        probability >= {summary['operating_point']:.4f}")
    print(f"sensitivity            {ratio(summary['sensitivity'])}")
    print(f"specificity            {ratio(summary['specificity'])}")
    for group, entry in summary["specificity_by_group"].items():
        print(f"  on {group:19} {ratio(entry)}")
    print(f"mean Dice (positives)  {summary['mean_dice_positives']:.4f} (source resolution)")
    for bucket, entry in summary["dice_by_size"].items():
        value = "-" if entry["mean_dice"] is None else f"{entry['mean_dice']:.4f}"
        print(f"  {bucket:20} {value} (n={entry['images']})")
    print(
        f"SIIM score             {summary['siim_score_at_prevalence']:.4f} "
        f"(at {summary['prevalence']:.0%} prevalence)"
    )
    print(f"written to {out} (evaluation.json, roc.png, reliability.png, worst_cases.png)")
    return EXIT_OK


def _cmd_predict(settings: Settings, args: argparse.Namespace) -> int:
    from pneumonode.conversion import ConversionError, encode_png
    from pneumonode.results import render_overlay

    predictor = load_predictor(settings, args)
    args.out.mkdir(parents=True, exist_ok=True)
    summary: list[dict[str, Any]] = []
    failed = 0
    for path in tqdm(args.files, desc="predict", unit="img", disable=len(args.files) < 2):
        try:
            prediction = predictor.predict_path(path)
        except (ConversionError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed += 1
            continue
        mask = prediction.mask
        (args.out / f"{path.stem}_mask.png").write_bytes(encode_png(mask.astype("uint8") * 255))
        background = prediction.prepared.source_pixels
        if background is None:
            background = prediction.prepared.letterbox.to_source(
                prediction.prepared.pixels, "linear"
            )
        overlay = render_overlay(background, mask)
        (args.out / f"{path.stem}_overlay.png").write_bytes(encode_png(overlay))
        finding = prediction.finding
        summary.append({"file": str(path), **dataclasses.asdict(finding)})
        print(f"{path.name}: {verdict(finding)}")
    return write_predictions(args.out, predictor, summary, failed, len(args.files))


def _cmd_package_model(settings: Settings, args: argparse.Namespace) -> int:
    from pneumonode.model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

    try:
        model, config = load_checkpoint(args.weights)
        others = [load_checkpoint(path) for path in args.average_with]
    except CheckpointError as exc:
        raise CliError(str(exc)) from None
    update: dict[str, Any] = {
        k: v for k, v in (("version", args.version), ("name", args.name)) if v is not None
    }
    if others:
        from pneumonode.model.acceleration import average_weights

        if any(other.architecture != config.architecture for _, other in others):
            raise CliError("--average-with: the checkpoints' architectures differ")
        model = average_weights([model] + [other for other, _ in others])
        # the run's own figures no longer describe these weights: kept beside the record
        training = dict(config.training)
        training["weight_average"] = {
            "of": [str(args.weights)] + [str(path) for path in args.average_with],
            "sha256": [config.weights_sha256] + [other.weights_sha256 for _, other in others],
            "versions": [config.version] + [other.version for _, other in others],
            "method": "each encoder's BatchNorm folded into its convolutions, the tensors "
            "averaged with equal weights, the usual layout restored",
            "metrics_before": config.metrics,
        }
        update |= {"training": training, "metrics": {}, "calibration": None, "decision": None}
    written = save_checkpoint(model, args.out, config.model_copy(update=update), dtype=args.dtype)
    size = (args.out / written.weights_file).stat().st_size / 1e6
    print(f"{args.out}: {written.name} {written.version}, {args.dtype}, {size:.1f} MB")
    print(f"sha256 {written.weights_sha256}")
    return EXIT_OK


def _cmd_model_card(settings: Settings, args: argparse.Namespace) -> int:
    from pneumonode.model.card import CardError, write_card
    from pneumonode.model.checkpoint import CheckpointError

    try:
        write_card(args.weights, evaluation=args.evaluation, siim_sample=args.siim_sample)
    except (CardError, CheckpointError, OSError, KeyError, ValueError) as exc:
        raise CliError(f"{args.weights}: {exc}") from None
    return EXIT_OK
