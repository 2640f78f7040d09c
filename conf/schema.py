"""Typed, validated configuration.

Every section is a frozen pydantic model that forbids unknown keys, so a misspelled key fails when the
job starts instead of silently falling back to a default half-way through a cluster run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Section(BaseModel):
    """Base of every configuration section: immutable, and strict about unknown keys."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class SparkSettings(Section):
    master: str = "local[*]"
    shuffle_partitions: int = Field(8, ge=1)
    ui: bool = False
    log_level: str = "WARN"
    conf: dict[str, str] = Field(default_factory=dict)


class LakehouseSettings(Section):
    root: str = "./lakehouse"

    def table(self, name: str) -> str:
        """The location of a table: tables are addressed by path, so no metastore is needed."""
        return f"{self.root.rstrip('/')}/{name}"


class MlflowSettings(Section):
    tracking_uri: str | None = None
    registry_uri: str | None = None
    experiment: str = "oncolake"


class PrivacySettings(Section):
    secret_env: str = "ONCOLAKE_PSEUDONYM_SECRET"
    allow_demo_secret: bool = True
    hash_source_paths: bool = False


class SourcesSettings(Section):
    """Where each collection's download lives; ``None`` skips that collection."""

    breakhis: str | None = None
    mias: str | None = None
    ddsm: str | None = None
    cbis_ddsm: str | None = None


class SynthSettings(Section):
    out: str = "./data/synthetic"
    images: int = Field(400, ge=8)
    downscale: float | None = Field(None, gt=0)
    seed: int = 0
    landing_images: int = Field(12, ge=0)  # new unlabelled images written to <out>/landing for scoring


class NormaliseSettings(Section):
    """Normalised image sizes: rows after cropping to the breast (mammography) or as is (histology)."""

    mammography_height: int = Field(672, ge=64)
    histology_height: int = Field(448, ge=64)


class TileSettings(Section):
    size: int = Field(224, ge=16)
    stride: int = Field(224, ge=8)
    # Tiles with less tissue than this fraction are background and are dropped.
    min_tissue: float = Field(0.3, ge=0, le=1)
    # A tile takes a finding's label when the overlap reaches this (|tile ∩ finding| / min of the areas).
    overlap_threshold: float = Field(0.5, gt=0, le=1)


class SplitSettings(Section):
    """Patient-level split fractions; assigned once and stored, never recomputed."""

    train: float = Field(0.6, gt=0, lt=1)
    val: float = Field(0.2, ge=0, lt=1)
    test: float = Field(0.2, gt=0, lt=1)
    seed: int = 0
    # Images whose perceptual hashes differ in at most this many of 64 bits are the same picture.
    link_max_hamming: int = Field(6, ge=0, le=32)

    @model_validator(mode="after")
    def _sums_to_one(self) -> SplitSettings:
        if abs(self.train + self.val + self.test - 1) > 1e-6:
            raise ValueError(f"split fractions must sum to 1 (got {self.train + self.val + self.test:g})")
        return self

    def fractions(self) -> dict[str, float]:
        return {"train": self.train, "val": self.val, "test": self.test}


class AugmentSettings(Section):
    """Training-time augmentation of a tile: the variations it could have had anyway."""

    flip: bool = True
    rotate_degrees: float = Field(10.0, ge=0, le=180)  # uniform in [-d, d]
    gain: float = Field(0.1, ge=0, lt=1)  # intensity multiplied by uniform [1-g, 1+g]
    bias: float = Field(0.1, ge=0, lt=1)  # then shifted by uniform [-b, b] (normalised units)


class AggregationSettings(Section):
    """Tile scores -> image score -> patient score; recorded on every registered model version."""

    rule: Literal["top_k_mean"] = "top_k_mean"
    image_top_k: int = Field(3, ge=1)
    patient_top_k: int = Field(1, ge=1)


class TrainSettings(Section):
    """Distributed training: one model per task, Horovod workers on the Spark executors."""

    tasks: tuple[str, ...] = (
        "mammo_normal_vs_abnormal",
        "mammo_benign_vs_malignant",
        "histo_benign_vs_malignant",
    )
    network: str = "compact"
    epochs: int = Field(8, ge=1)
    batch_size: int = Field(32, ge=1)
    learning_rate: float = Field(0.005, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0)
    # Mean and spread of normalised 8-bit tiles (0-1): inputs become roughly zero-centred, unit variance.
    pixel_mean: float = Field(0.45, ge=0, le=1)
    pixel_std: float = Field(0.25, gt=0)
    augment: AugmentSettings = AugmentSettings()
    warmup_epochs: float = Field(1.0, ge=0)
    patience: int = Field(3, ge=1)
    # Horovod processes; null means one per executor core (spark.default.parallelism).
    num_proc: int | None = Field(None, ge=1)
    reader_workers: int = Field(2, ge=1)
    seed: int = 0
    # Registered model names are <model_prefix><task>.
    model_prefix: str = "oncolake-"
    # Also train each task on a random image-level split (the paper's mistake) and report its figures
    # beside the real ones, so the inflation is visible. Doubles training time; never registered.
    leakage_audit: bool = False


class EvaluateSettings(Section):
    """Calibration, the decision threshold and the figures, fitted and reported as the issue asks."""

    # How the image-level decision threshold is chosen on the validation split: the highest threshold
    # reaching ``target_sensitivity`` ("sensitivity"), or the one maximising sensitivity + specificity
    # ("youden").
    threshold_rule: Literal["sensitivity", "youden"] = "sensitivity"
    target_sensitivity: float = Field(0.9, gt=0, le=1)
    bootstrap_rounds: int = Field(1000, ge=10)
    # Reports are written under <lakehouse.root>/<reports>/<model name>/v<version>/.
    reports: str = "reports"


class Settings(Section):
    """The whole configuration of a job."""

    spark: SparkSettings = SparkSettings()
    lakehouse: LakehouseSettings = LakehouseSettings()
    mlflow: MlflowSettings = MlflowSettings()
    privacy: PrivacySettings = PrivacySettings()
    sources: SourcesSettings = SourcesSettings()
    synth: SynthSettings = SynthSettings()
    normalise: NormaliseSettings = NormaliseSettings()
    tiles: TileSettings = TileSettings()
    split: SplitSettings = SplitSettings()
    train: TrainSettings = TrainSettings()
    evaluate: EvaluateSettings = EvaluateSettings()
    aggregation: AggregationSettings = AggregationSettings()
    # The profile the values came from, recorded with tables and runs; set by the loader.
    profile: str = "local"

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
        """The settings as plain data, safe to record with a table or an MLflow run (no secrets in it)."""
        return self.model_dump(mode="json")
