"""Cityscapes mode: the official class IoU and mIoU, by hand and against cityscapesscripts."""

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medseg.metrics.cityscapes import class_counts, class_iou, labelid_confusion, mean_iou
from medseg.metrics.evaluate import evaluate_folders

ROAD, SIDEWALK, BUILDING, CAR, UNLABELED, STATIC = 7, 8, 11, 26, 0, 4


def save_png(path: Path, label_ids: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(label_ids.astype(np.uint8), mode="L").save(path)
    return path


def hand_worked_pair() -> tuple[np.ndarray, np.ndarray]:
    gt = np.array([[ROAD, ROAD, ROAD, CAR], [CAR, UNLABELED, UNLABELED, SIDEWALK]])
    pred = np.array([[ROAD, ROAD, STATIC, CAR], [ROAD, ROAD, UNLABELED, BUILDING]])
    return pred, gt


def test_hand_worked_class_iou():
    pred, gt = hand_worked_pair()
    iou = class_iou(class_counts(labelid_confusion(pred, gt)))
    # road: TP 2; FN 1 (predicted "static", not an evaluated class, still a miss); FP 1 (on the car pixel; the
    # road predicted on "unlabeled" ground truth is free) → 2/4
    assert iou[ROAD] == 0.5
    # car: TP 1, FN 1 (predicted road), FP 0 → 1/2
    assert iou[CAR] == 0.5
    assert iou[SIDEWALK] == 0.0  # TP 0, FN 1
    assert iou[BUILDING] == 0.0  # TP 0, FP 1 (on sidewalk)
    assert len(iou) == 19 and math.isnan(iou[23])  # sky: absent from both, 0/0
    assert mean_iou(iou) == 0.25  # (0.5 + 0.5 + 0 + 0) / 4 defined classes


def cityscapes_folders(root: Path, images: dict[str, tuple[np.ndarray, np.ndarray]]) -> tuple[Path, Path]:
    for stem, (pred, gt) in images.items():
        city = stem.split("_")[0]
        save_png(root / "gtFine" / "val" / city / f"{stem}_gtFine_labelIds.png", gt)
        save_png(root / "pred" / f"{stem}_labelIds.png", pred)
    return root / "pred", root / "gtFine" / "val"


def random_images(count: int, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    images = {}
    for index in range(count):
        gt = rng.integers(0, 34, size=(16, 24))
        pred = np.where(rng.random(gt.shape) < 0.6, gt, rng.integers(0, 34, size=gt.shape))
        images[f"{'frankfurt' if index % 2 else 'lindau'}_000000_{index:06d}"] = (pred, gt)
    return images


def test_folder_evaluation_sums_counts_over_images(tmp_path):
    pred, gt = hand_worked_pair()
    images = {"munster_000000_000001": (pred, gt), "munster_000000_000002": (gt, gt)}
    evaluation = evaluate_folders(*cityscapes_folders(tmp_path, images), convention="cityscapes", progress=False)
    road = evaluation.summary["per_structure"]["road"]
    # image 1 as above; image 2 perfect (3 road pixels): TP 2 + 3, FP 1, FN 1 → 5/7
    assert (road["tp"], road["fp"], road["fn"]) == (5, 1, 1)
    assert road["iou"] == pytest.approx(5 / 7)
    per_image = evaluation.table[evaluation.table.structure == "road"].iou.tolist()
    assert per_image == [0.5, 1.0]
    assert "mIoU" in evaluation.markdown()


def test_agrees_with_the_official_cityscapesscripts(tmp_path, monkeypatch):
    # pip install --no-deps cityscapesscripts pyquaternion (pyquaternion: imported by its helpers)
    official = pytest.importorskip("cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling")
    images = random_images(3)
    pred_dir, gt_dir = cityscapes_folders(tmp_path, images)
    # no instance scores (they need instanceIds images and crash under numpy 2), no results file in site-packages
    for name, value in {"evalInstLevelScore": False, "JSONOutput": False, "quiet": True}.items():
        monkeypatch.setattr(official.args, name, value, raising=False)
    stems = sorted(images)
    try:
        expected = official.evaluateImgLists(
            [str(pred_dir / f"{s}_labelIds.png") for s in stems],
            [str(next(gt_dir.rglob(f"{s}_gtFine_labelIds.png"))) for s in stems],
            official.args,
        )
    except SystemExit as err:  # the official script calls sys.exit on errors
        pytest.fail(f"cityscapesscripts exited with {err.code}")
    evaluation = evaluate_folders(pred_dir, gt_dir, convention="cityscapes", progress=False)
    ours = {name: s["iou"] for name, s in evaluation.summary["per_structure"].items()}
    assert ours == pytest.approx({k: v for k, v in expected["classScores"].items() if k in ours}, nan_ok=True)
    assert evaluation.summary["overall"]["miou"] == pytest.approx(expected["averageScoreClasses"])


def test_bad_cityscapes_input_names_the_case(tmp_path):
    pred, gt = hand_worked_pair()
    pred_dir, gt_dir = cityscapes_folders(tmp_path, {"ulm_000000_000001": (np.full_like(pred, 255), gt)})
    with pytest.raises(ValueError, match=r"case 'ulm_000000_000001'.*\[255\] outside the labelIds"):
        evaluate_folders(pred_dir, gt_dir, convention="cityscapes", progress=False)
    Image.fromarray(np.zeros((2, 4, 3), np.uint8), mode="RGB").save(pred_dir / "ulm_000000_000001_labelIds.png")
    with pytest.raises(ValueError, match="RGB image; expected a single-channel label PNG"):
        evaluate_folders(pred_dir, gt_dir, convention="cityscapes", progress=False)
    with pytest.raises(ValueError, match="do not pass labels"):
        evaluate_folders(pred_dir, gt_dir, {1: "a"}, convention="cityscapes", progress=False)
