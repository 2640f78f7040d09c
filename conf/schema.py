"""Typed, validated configuration: the types and bounds of every key; the values live in ``base.yaml``.

Every section is a frozen pydantic model that forbids unknown keys, so a misspelled key fails when the
job starts instead of silently falling back to a default half-way through a cluster run. No field has a
default: ``conf/base.yaml`` is the one place of the defaults, and a :class:`Settings` is built only by
:func:`conf.load_settings` (a key missing from every layer is an error naming it).

Names that other layers define (the tasks of :data:`core.tasks.TASKS`, the networks of
:data:`model.networks.NETWORKS`) are spelled out here as ``Literal`` types, because this package may not
import those layers; ``tests/conf/test_config.py`` checks that the lists agree. Local paths
(``lakehouse.root``, ``synth.out``, ``sources.*``) are made absolute against the current directory when
the settings are loaded on the driver, so executors never resolve them against their own working
directories; URIs (anything with ``://``) are kept as given.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

# The registered tasks (core.tasks.TASKS) and networks (model.networks.NETWORKS).
TaskName = Literal[
    "mammo_normal_vs_abnormal",
    "mammo_benign_vs_malignant",
    "mammo_benign_vs_malignant_external",
    "histo_benign_vs_malignant",
    "paper_all",
]
NetworkName = Literal["alexnet_like", "compact"]


def absolute_path(location: str) -> str:
    """``location`` made absolute against the current directory (``~`` expanded); URIs are kept as given.

    Jobs apply it to local paths from their command line too (``--source``, ``--landing``): a relative
    path handed to an executor would be resolved against that executor's working directory.
    """
    if not location or "://" in location:
        return location
    return os.path.abspath(os.path.expanduser(location))


# A local folder or a URI; a local one is stored absolute (see absolute_path).
LocalPath = Annotated[str, AfterValidator(absolute_path)]


class Section(BaseModel):
    """Base of every configuration section: immutable, and strict about unknown keys."""

    model_config = ConfigDict(frozen=True, extra="forbid")


# Keys whose values are secrets (Spark's default spark.redaction.regex, plus "credential").
SECRET_KEY = re.compile(r"(?i)secret|password|token|access[.]key|credential")
REDACTED = "*********(redacted)"
HIDDEN_PATH = "<hidden: privacy.hash_source_paths>"


class SparkSettings(Section):
    master: str
    shuffle_partitions: int = Field(ge=1)
    ui: bool
    log_level: str
    conf: dict[str, str]


class LakehouseSettings(Section):
    root: LocalPath

    def table(self, name: str) -> str:
        """The location of a table: tables are addressed by path, so no metastore is needed."""
        return f"{self.root.rstrip('/')}/{name}"


class MlflowSettings(Section):
    tracking_uri: str | None
    registry_uri: str | None
    experiment: str


class PrivacySettings(Section):
    secret_env: str
    allow_demo_secret: bool
    hash_source_paths: bool
    keep_report_text: bool  # free text of expert reports: dropped unless on


class SourcesSettings(Section):
    """Where each collection's download lives; ``None`` skips that collection."""

    breakhis: LocalPath | None
    mias: LocalPath | None
    ddsm: LocalPath | None
    cbis_ddsm: LocalPath | None


class SynthSettings(Section):
    out: LocalPath
    images: int = Field(ge=8)
    downscale: float | None = Field(gt=0)
    seed: int
    landing_images: int = Field(ge=0)  # new unlabelled images written to <out>/landing for scoring


class NormaliseSettings(Section):
    """Normalised image sizes: rows after cropping to the breast (mammography) or as is (histology)."""

    mammography_height: int = Field(ge=64)
    histology_height: int = Field(ge=64)
    # The largest image any decoder will allocate (rows x columns x frames, all formats): a file whose
    # header declares more is quarantined before its pixels are read (decompression bombs).
    max_pixels: int = Field(ge=1)


class TileSettings(Section):
    size: int = Field(ge=16)
    # The grid's step: training-split images are cut on it (their lesions also give lesion-centred
    # patches; an overlap there would multiply an epoch's tiles and time for little new).
    stride: int = Field(ge=8)
    # Per modality, the step for the images that are scored (val, test, landed): below the size, tiles
    # overlap, so a lesion on one tile's edge is whole in a neighbour. Modalities not named use stride.
    scored_stride: dict[Literal["mammography", "histology"], int]
    # Tiles with less tissue than this fraction are background and are dropped.
    min_tissue: float = Field(ge=0, le=1)
    # A tile takes a finding's label when the overlap reaches this (|tile ∩ finding| / min of the areas).
    overlap_threshold: float = Field(gt=0, le=1)
    # Rows per Parquet row group of the tiles table (the unit Petastorm reads, shuffles and shards):
    # every split needs at least 2 per training worker; fewer rows, more groups, less memory per read.
    row_group_rows: int = Field(ge=1)
    # Training patches centred on each located finding of an abnormal training mammogram (label_source
    # lesion_patch), shifted by up to lesion_jitter x size; 0 turns them off. Never in val or test.
    lesion_patches: int = Field(ge=0)
    lesion_jitter: float = Field(ge=0, le=0.5)

    @model_validator(mode="after")
    def _grids_cover(self) -> TileSettings:
        steps = [("stride", self.stride), *((f"scored_stride.{m}", s) for m, s in self.scored_stride.items())]
        for key, value in steps:
            if not 8 <= value <= self.size:
                raise ValueError(
                    f"tiles.{key} is {value}: it must lie between 8 and tiles.size {self.size} (a larger "
                    "step leaves pixels between tiles that are never read)"
                )
        return self


class SplitSettings(Section):
    """Patient-level split fractions; assigned once and stored, never recomputed."""

    train: float = Field(gt=0, lt=1)
    val: float = Field(ge=0, lt=1)
    test: float = Field(gt=0, lt=1)
    seed: int
    # Images whose perceptual hashes differ in at most this many of 64 bits are the same picture.
    link_max_hamming: int = Field(ge=0, le=32)
    # Per collection: patient (dealt by patient, the default) or official (the collection's own
    # train/test division, CBIS-DDSM's: its test set stays test; patient and link groups still never
    # span splits, so a group with any official test image goes to test whole).
    strategy: dict[Literal["breakhis", "mias", "ddsm", "cbis_ddsm"], Literal["patient", "official"]]

    def official(self) -> frozenset[str]:
        """The collections whose own division is honoured."""
        return frozenset(name for name, rule in self.strategy.items() if rule == "official")

    def strategy_of(self, collection: str) -> str:
        """``patient`` or ``official``: what deals a collection's new images."""
        return "official" if collection in self.official() else "patient"

    @model_validator(mode="after")
    def _sums_to_one(self) -> SplitSettings:
        if abs(self.train + self.val + self.test - 1) > 1e-6:
            raise ValueError(f"split fractions must sum to 1 (got {self.train + self.val + self.test:g})")
        return self

    def fractions(self) -> dict[str, float]:
        return {"train": self.train, "val": self.val, "test": self.test}


class TaskTraining(Section):
    """One task's own values of the training settings that differ between tasks (``train.per_task``);
    a key left out keeps the ``train`` value (the one place where a key may be absent)."""

    epochs: int | None = Field(default=None, ge=1)
    learning_rate: float | None = Field(default=None, gt=0)
    patience: int | None = Field(default=None, ge=1)
    warmup_epochs: float | None = Field(default=None, ge=0)


class AugmentSettings(Section):
    """Training-time augmentation of a tile: the variations it could have had anyway."""

    flip: bool
    rotate90: bool  # a quarter turn 0-3 times, each equally likely
    rotate_degrees: float = Field(ge=0, le=180)  # uniform in [-d, d]
    gain: float = Field(ge=0, lt=1)  # intensity multiplied by uniform [1-g, 1+g]
    bias: float = Field(ge=0, lt=1)  # then shifted by uniform [-b, b] (normalised units)


class AggregationSettings(Section):
    """Tile scores -> image score -> patient score; recorded on every registered model version."""

    # auto: chosen per model on its validation split among core.aggregation's candidates; or a fixed rule.
    rule: Literal["auto", "max", "top_k_mean", "noisy_or", "mean"]
    image_top_k: int = Field(ge=1)
    patient_rule: Literal["auto", "max", "top_k_mean", "noisy_or", "mean"]
    patient_top_k: int = Field(ge=1)


class TrainSettings(Section):
    """Distributed training: one model per task, Horovod workers on the Spark executors."""

    tasks: tuple[TaskName, ...] = Field(min_length=1)
    network: NetworkName
    epochs: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    learning_rate: float = Field(gt=0)
    momentum: float = Field(ge=0, lt=1)
    weight_decay: float = Field(ge=0)
    # Mean and spread of normalised 8-bit tiles (0-1): inputs become roughly zero-centred, unit variance.
    pixel_mean: float = Field(ge=0, le=1)
    pixel_std: float = Field(gt=0)
    augment: AugmentSettings
    warmup_epochs: float = Field(ge=0)
    # After warm-up: constant, or a half cosine down to 5% of the peak by the last epoch.
    schedule: Literal["constant", "cosine"]
    patience: int = Field(ge=1)
    # How the workers cooperate: Horovod (Gloo) or PyTorch DDP (Gloo) through Spark's TorchDistributor.
    backend: Literal["horovod", "torch_distributor"]
    # How long a worker waits in a collective for a peer that stopped answering (hung, or its machine
    # unreachable) before the run fails; a peer that died fails it at once.
    peer_timeout_seconds: int = Field(ge=5)
    # Training processes; null means one per executor core (spark.default.parallelism).
    num_proc: int | None = Field(ge=1)
    # Petastorm decode threads per worker; null: from the cores the worker has (its share of the
    # machine's cores), which also sets its torch threads.
    reader_workers: int | None = Field(ge=1)
    seed: int
    # Registered model names are <model_prefix><task>.
    model_prefix: str
    # Per collection (or landing), the labels its tiles train on: its own, or the expert consensus.
    labels: dict[
        Literal["breakhis", "mias", "ddsm", "cbis_ddsm", "landing"], Literal["collection", "consensus"]
    ]
    consensus_method: Literal["majority_vote", "dawid_skene"]
    # Also train each task on a random image-level split (the paper's mistake) and report its figures
    # beside the real ones, so the inflation is visible. Doubles training time; never registered.
    leakage_audit: bool
    # Per task, the training values that differ from the ones above (TaskTraining's keys).
    per_task: dict[TaskName, TaskTraining]

    def for_task(self, task: str) -> TrainSettings:
        """These settings with ``task``'s own values of ``per_task`` in place."""
        own = self.per_task.get(task)  # type: ignore[call-overload]
        if own is None:
            return self
        return self.model_copy(update={k: v for k, v in own.model_dump().items() if v is not None})


class ConsensusSettings(Section):
    """Expert reports -> consensus labels (pipelines/consensus.py)."""

    methods: tuple[Literal["majority_vote", "dawid_skene"], ...] = Field(min_length=1)
    max_iterations: int = Field(ge=1)
    tolerance: float = Field(gt=0)
    # Marks of one image overlapping with at least this IoU are one finding.
    mark_iou: float = Field(gt=0, le=1)


class MaintainSettings(Section):
    """Delta maintenance (pipelines/maintenance.py): compaction and retention."""

    min_retention_hours: float = Field(ge=0)
    margin_hours: float = Field(ge=0)
    min_log_retention_days: int = Field(ge=1)
    log_margin_days: int = Field(ge=0)
    target_file_mb: int = Field(ge=1)


class LandingSettings(Section):
    """The drop folders that ``oncolake stream`` watches (docs/landing.md: the contract for devices)."""

    images: LocalPath | None  # devices' images; None: no images query
    reports: LocalPath | None  # experts' report files; None: no reports query
    modality: Literal["mammography", "histology"] | None  # images nothing else names the modality of
    max_files_per_trigger: int = Field(ge=1)
    trigger_seconds: float = Field(gt=0)
    # What happens to a consumed file once its batch is committed (Spark's cleanSource): kept in place,
    # moved under archive_dir (same path below it), or deleted.
    clean_source: Literal["off", "archive", "delete"]
    archive_dir: LocalPath | None
    # The queries' checkpoints: <lakehouse.root>/_checkpoints by default.
    checkpoints: LocalPath | None

    @model_validator(mode="after")
    def _archive_needs_a_folder(self) -> LandingSettings:
        if self.clean_source == "archive" and not self.archive_dir:
            raise ValueError("landing.archive_dir must be set when landing.clean_source is archive")
        return self


class EvaluateSettings(Section):
    """Calibration, the decision threshold and the figures, fitted and reported as the issue asks."""

    # How the image-level decision threshold is chosen on the validation split: the highest threshold
    # reaching ``target_sensitivity`` ("sensitivity"), or the one maximising sensitivity + specificity
    # ("youden").
    threshold_rule: Literal["sensitivity", "youden"]
    target_sensitivity: float = Field(gt=0, le=1)
    bootstrap_rounds: int = Field(ge=10)
    # The promotion gate (model/promotion.py): a version becomes champion only when its patient-level
    # test AUC reaches min_auc, the lower end of its 95% interval is above 0.5 and, when a champion
    # exists, the paired-bootstrap interval of the AUC difference lies above promotion_margin.
    min_auc: float = Field(ge=0, le=1)
    promotion_margin: float = Field(ge=-1, le=1)
    # ... and with at least this many test patients of each class behind the AUC.
    min_patients: int = Field(ge=1)
    # Reports are written under <lakehouse.root>/<reports>/<model name>/v<version>/.
    reports: str


class Settings(Section):
    """The whole configuration of a job."""

    spark: SparkSettings
    lakehouse: LakehouseSettings
    mlflow: MlflowSettings
    privacy: PrivacySettings
    sources: SourcesSettings
    synth: SynthSettings
    normalise: NormaliseSettings
    tiles: TileSettings
    split: SplitSettings
    train: TrainSettings
    evaluate: EvaluateSettings
    consensus: ConsensusSettings
    maintain: MaintainSettings
    landing: LandingSettings
    aggregation: AggregationSettings
    # The profile the values came from, recorded with tables and runs; set by the loader.
    profile: str

    @model_validator(mode="after")
    def _tracking_needs_a_uri_off_local_disk(self) -> Settings:
        if self.mlflow.tracking_uri is None and "://" in self.lakehouse.root:
            raise ValueError("mlflow.tracking_uri must be set when lakehouse.root is not a local folder")
        return self

    def tracking_uri(self) -> str:
        """MLflow's tracking URI; by default a SQLite file inside a local lakehouse."""
        if self.mlflow.tracking_uri:
            return self.mlflow.tracking_uri
        return f"sqlite:///{Path(self.lakehouse.root).resolve()}/mlflow.db"

    def public_dict(self) -> dict[str, Any]:
        """The settings as plain data, safe to record with a table or an MLflow run.

        Secrets are redacted: ``spark.conf`` values whose key looks like a credential (Spark's own
        ``spark.redaction.regex``, plus ``credential``) and a password inside an MLflow URI. With
        ``privacy.hash_source_paths`` the raw collections' and drop folders' paths are hidden too.
        """
        data = self.model_dump(mode="json")
        data["spark"]["conf"] = {
            key: REDACTED if SECRET_KEY.search(key) else value for key, value in data["spark"]["conf"].items()
        }
        for key in ("tracking_uri", "registry_uri"):
            uri = data["mlflow"][key]
            if uri and urlsplit(uri).password is not None:
                data["mlflow"][key] = uri.replace(f":{urlsplit(uri).password}@", f":{REDACTED}@")
        if self.privacy.hash_source_paths:
            for section, keys in (
                ("sources", ("breakhis", "mias", "ddsm", "cbis_ddsm")),
                ("synth", ("out",)),
                ("landing", ("images", "reports", "archive_dir")),
            ):
                for key in keys:
                    if data[section][key] is not None:
                        data[section][key] = HIDDEN_PATH
        return data
