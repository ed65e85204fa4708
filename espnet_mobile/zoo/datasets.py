"""Class names and palettes of the datasets the published checkpoints were trained on."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DatasetInfo:
    """Label space of a dataset as the checkpoints index it (logit channel i = class i)."""

    name: str
    title: str
    classes: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    # A logit channel the checkpoints carry for unlabelled pixels (Cityscapes' "void", CamVid's
    # "unlabelled"): never a label to score, so mIoU leaves it out.
    void_index: int | None = None

    def __post_init__(self) -> None:
        if len(self.classes) != len(self.palette):
            raise ValueError(f"{self.name}: {len(self.classes)} classes but {len(self.palette)} colours")

    @property
    def scored_classes(self) -> tuple[str, ...]:
        """The classes accuracy is measured over, in logit order (the void channel left out)."""
        return tuple(c for i, c in enumerate(self.classes) if i != self.void_index)


def voc_palette(n: int) -> tuple[tuple[int, int, int], ...]:
    """PASCAL VOC's colour map: the bits of the class index spread over R, G, B from the top bit down."""
    colours = []
    for index in range(n):
        r = g = b = 0
        c = index
        for bit in range(7, -1, -1):
            r |= (c & 1) << bit
            g |= ((c >> 1) & 1) << bit
            b |= ((c >> 2) & 1) << bit
            c >>= 3
        colours.append((r, g, b))
    return tuple(colours)


VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
)

# Cityscapes' 19 evaluation classes in train-id order, plus the 20th channel the
# ESPNet/ESPNetv2 checkpoints carry for ignored/void pixels.
CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle", "void",
)
CITYSCAPES_PALETTE = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
    (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
    (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
    (0, 80, 100), (0, 0, 230), (119, 11, 32), (0, 0, 0),
)

# CamVid as split by the SegNet tutorial: 11 classes plus "unlabelled".
CAMVID_CLASSES = (
    "sky", "building", "pole", "road", "pavement", "tree", "sign symbol", "fence", "car",
    "pedestrian", "bicyclist", "unlabelled",
)
CAMVID_PALETTE = (
    (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222),
    (128, 128, 0), (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0),
    (0, 128, 192), (0, 0, 0),
)

DATASETS: dict[str, DatasetInfo] = {
    "voc": DatasetInfo("voc", "PASCAL VOC 2012", VOC_CLASSES, voc_palette(len(VOC_CLASSES))),
    "cityscapes": DatasetInfo("cityscapes", "Cityscapes", CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, void_index=19),
    "camvid": DatasetInfo("camvid", "CamVid (SegNet split)", CAMVID_CLASSES, CAMVID_PALETTE, void_index=11),
}
