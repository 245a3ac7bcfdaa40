"""The cases of the suggestion study, in two sets kept apart:

- FIT_CASES chose the rule and its constants (``auto``'s reading per optimizer, the range): any
  change to the rule is judged on them first. They include the first seven test cases
  (EARLIER_TEST_CASES), which have been looked at since they judged the rule of 2026-11-30;
- TEST_CASES judge the rule once it is frozen, and are reported apart and never used to choose a
  rule. Their data is used by no fit case (scans and scenes: images from scikit-image and
  matplotlib that no other set cuts from), none is a fit case with one setting changed, two train
  for more than 10x the sweep's steps, two have ImageNet's stem (80 and 112 px), one has batch 128.

Every training is long enough to mean something: at least 10 epochs and 300 optimizer steps.
"""

from dataclasses import dataclass

SGD_GRID = (0.004, 0.016, 0.064, 0.256)  # x4 apart; refined to x2 around the best
ADAMW_GRID = (2.5e-4, 1e-3, 4e-3, 1.6e-2)


@dataclass(frozen=True)
class Pretrain:
    """A model trained first on other data, for a fine-tuning case."""
    name: str
    data: str
    input_size: int
    batch_size: int
    epochs: int
    lr: float
    optimizer: str = "adamw"


@dataclass(frozen=True)
class Case:
    name: str
    role: str  # "fit" or "test"
    data: str  # "digits" or a patch set of benchmarks/photo_patches.py: "patches", "colour", "scans", "scenes"
    input_size: int
    batch_size: int
    epochs: int
    optimizer: str = "sgd"
    lr_start: float = 1e-5
    lr_end: float = 10.0
    lr_iter: int = 100
    grid: tuple = SGD_GRID  # first grid, extended while the best rate sits at an edge, then refined
    max_samples: int | None = None
    pretrain: Pretrain | None = None
    verify_steps: int = 0  # first-round steps of --lr_verify (0: not run)
    horizon_check: bool = False  # also train at twice the epochs around the best rate
    arch: str = "resnet50"  # --arch: a smaller torchvision model affords trainings of 1,500+ steps here


COLOUR_16 = Pretrain("colour-16px-adamw", "colour", 16, 32, 10, 1e-3)

FIT_CASES = (
    Case("digits-16px-b32", "fit", "digits", 16, 32, 10, lr_iter=120, verify_steps=12),
    Case("digits-32px-b32", "fit", "digits", 32, 32, 20, max_samples=480, verify_steps=10),
    Case("patches-16px-b64", "fit", "patches", 16, 64, 25, lr_start=1e-4, max_samples=800, verify_steps=10),
    Case("digits-16px-b32-adamw", "fit", "digits", 16, 32, 10, "adamw", lr_end=1.0, lr_iter=150,
         grid=ADAMW_GRID, verify_steps=15),
    Case("patches-16px-b64-adamw", "fit", "patches", 16, 64, 25, "adamw", lr_end=1.0, grid=ADAMW_GRID,
         max_samples=800, verify_steps=10),
    Case("digits-32px-b32-adamw", "fit", "digits", 32, 32, 20, "adamw", lr_end=1.0, grid=ADAMW_GRID,
         max_samples=480, verify_steps=10),
    # Trainings at least 15x the sweep's 100 steps (ImageNet's sweep is a far smaller share still):
    # 1,438 digits at batch 32 are 44 steps per epoch, 35 epochs 1,540 steps; 800 grey patches at
    # batch 64 are 12 steps per epoch, 125 epochs 1,500 steps. ResNet-18 makes them affordable.
    Case("digits-16px-b32-r18-long", "fit", "digits", 16, 32, 35, verify_steps=10, arch="resnet18"),
    Case("patches-16px-b64-r18-long", "fit", "patches", 16, 64, 125, lr_start=1e-4, max_samples=800,
         verify_steps=10, arch="resnet18"),
)

# The first test cases, judged on 2026-11-30 (docs/suggestion_study.md); looked at since, so fit cases now.
EARLIER_TEST_CASES = (
    Case("colour-16px-b32", "fit", "colour", 16, 32, 10, verify_steps=10, horizon_check=True),
    Case("finetune-colour-to-patches-16px-b32", "fit", "patches", 16, 32, 10, pretrain=COLOUR_16,
         verify_steps=10),
    Case("finetune-colour-to-digits-16px-b32-adamw", "fit", "digits", 16, 32, 10, "adamw", lr_end=1.0,
         grid=ADAMW_GRID, pretrain=COLOUR_16, verify_steps=10, horizon_check=True),
    Case("colour-96px-b32", "fit", "colour", 96, 32, 10, verify_steps=10),
    Case("digits-72px-b64-adamw", "fit", "digits", 72, 64, 14, "adamw", lr_end=1.0, grid=ADAMW_GRID,
         verify_steps=10),
    Case("colour-32px-b64-adamw", "fit", "colour", 32, 64, 20, "adamw", lr_end=1.0, grid=ADAMW_GRID,
         verify_steps=10),
    Case("patches-72px-b128", "fit", "patches", 72, 128, 28, verify_steps=10),
)

# Judge the rule frozen at the commit that added them. Data no other case uses (scan-patches-v1,
# scene-patches-v1), and none is another case with one setting changed. Cheapest first.
TEST_CASES = (
    # 600 colour scenes at batch 32: 18 steps per epoch, 17 epochs 306 steps; ImageNet's stem.
    Case("scenes-72px-b32-adamw", "test", "scenes", 72, 32, 17, "adamw", lr_end=1.0, grid=ADAMW_GRID,
         verify_steps=10),
    # 1,200 grey scans at batch 64: 18 steps per epoch, 17 epochs 306 steps; the small stem.
    Case("scans-24px-b64-adamw", "test", "scans", 24, 64, 17, "adamw", lr_end=1.0, grid=ADAMW_GRID,
         verify_steps=10),
    # Trainings at least 10x the sweep: 37 steps per epoch, 28 epochs 1,036 steps.
    Case("scans-16px-b32-long", "test", "scans", 16, 32, 28, verify_steps=10),
    # 18 steps per epoch, 58 epochs 1,044 steps.
    Case("scenes-16px-b32-long", "test", "scenes", 16, 32, 58, lr_start=1e-4, verify_steps=10),
    # ImageNet's stem at 112 px: 12 steps per epoch at batch 48, 26 epochs 312 steps.
    Case("scenes-112px-b48", "test", "scenes", 112, 48, 26, verify_steps=10),
    # ImageNet's stem at 80 px, batch 128: 9 steps per epoch, 34 epochs 306 steps.
    Case("scans-80px-b128", "test", "scans", 80, 128, 34, verify_steps=10),
)

QUICK_CASES = (
    Case("quick-digits-16px-b16", "fit", "digits", 16, 16, 1, lr_start=1e-3, lr_iter=20, max_samples=64,
         grid=(1e-2, 4e-2, 0.16), verify_steps=2, arch="resnet18"),
)

FIT_CASES = FIT_CASES + EARLIER_TEST_CASES
ALL_CASES = FIT_CASES + TEST_CASES
