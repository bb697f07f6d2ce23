"""CALM's hyper-parameters: one frozen dataclass, and the named presets (calm's default, the paper's recipe)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from . import calm

Abstain = Literal["none", "score", "margin"]
ABSTAIN_MODES: tuple[str, ...] = get_args(Abstain)
Combiner = Literal["auto", "vote", "probe"]
COMBINERS: tuple[str, ...] = get_args(Combiner)
Split = Literal["none", "auto"]
SPLITS: tuple[str, ...] = get_args(Split)
ReliabilityFrom = Literal["leave-one-out", "support"]
RELIABILITY_FROM: tuple[str, ...] = get_args(ReliabilityFrom)


@dataclass(frozen=True)
class CalmConfig:
    """CALM hyper-parameters. The defaults are calm's own method (docs/accuracy.md says how they
    were chosen); `PRESETS["paper"]` is the paper's exact recipe."""

    tau: float = 0.03  # temperature of the per-head posterior
    scheme: calm.Scheme = "separation_f1"
    tau_w: float | None = None  # weight sharpening; None: 0.5 (separation_f1), 1.0 (margin_clamped), 0.05 (softmax)
    top_k: int | Literal["auto"] | None = 20  # heads kept per class; auto: leave-one-out choice; None: all
    prior_strength: float = 2.0  # separation_f1: clips of evidence the separation prior is worth
    sav_shrinkage: float = 1.0  # pull of each class's weights towards SAV's uniform vote: s / (s + clips)
    reliability_from: ReliabilityFrom = "leave-one-out"  # per-clip schemes without validation clips
    alpha: float = 0.0  # per-clip schemes: shrinkage of reliability towards the head's mean over classes
    sav_heads: int = 20  # heads of the SAV baseline
    max_layer: int | None = None  # only heads of layers 0..max_layer are candidates (bounds the exit layer)
    abstain: Abstain = "none"  # answer `unknown` when the score or margin is below a threshold
    abstain_keep: float = 0.95  # the threshold keeps this share of correct validation answers
    split: Split = "none"  # auto: a class whose support is two kinds of sound gets two prototypes (subclasses.py)
    # vote: CALM's class-specific head vote; probe: logistic regression over the heads up to the vote's exit layer
    # (probe.py); auto: the vote until clips have been taught at the site (calm add, the review page), then the
    # probe, which learns far more from them (docs/robustness.md). Library fits without that history vote.
    combiner: Combiner = "auto"

    def __post_init__(self) -> None:
        if not self.tau > 0:
            raise ValueError(f"tau must be > 0, got {self.tau}")
        if self.scheme not in calm.SCHEMES:
            raise ValueError(f"scheme {self.scheme!r} is not known; allowed: {', '.join(calm.SCHEMES)}")
        if self.tau_w is not None and not self.tau_w > 0:
            raise ValueError(f"tau_w must be > 0, got {self.tau_w}")
        if (
            self.top_k is not None
            and self.top_k != "auto"
            and (isinstance(self.top_k, bool) or not (isinstance(self.top_k, int) and self.top_k >= 1))
        ):
            raise ValueError(f"top_k must be an integer >= 1, 'auto' or unset, got {self.top_k!r}")
        if not self.prior_strength >= 0:
            raise ValueError(f"prior_strength must be >= 0, got {self.prior_strength}")
        if not self.sav_shrinkage >= 0:
            raise ValueError(f"sav_shrinkage must be >= 0, got {self.sav_shrinkage}")
        if self.reliability_from not in RELIABILITY_FROM:
            raise ValueError(
                f"reliability_from {self.reliability_from!r} is not known; allowed: {', '.join(RELIABILITY_FROM)}"
            )
        if self.alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {self.alpha}")
        if self.sav_heads < 1:
            raise ValueError(f"sav_heads must be >= 1, got {self.sav_heads}")
        if self.max_layer is not None and self.max_layer < 0:
            raise ValueError(f"max_layer must be >= 0, got {self.max_layer}")
        if self.abstain not in ABSTAIN_MODES:
            raise ValueError(f"abstain {self.abstain!r} is not known; allowed: {', '.join(ABSTAIN_MODES)}")
        if not 0 < self.abstain_keep <= 1:
            raise ValueError(f"abstain_keep must be in (0, 1], got {self.abstain_keep}")
        if self.combiner not in COMBINERS:
            raise ValueError(f"combiner {self.combiner!r} is not known; allowed: {', '.join(COMBINERS)}")
        if self.combiner == "probe" and self.abstain != "none":
            raise ValueError("abstain is measured on CALM's vote; with combiner probe leave abstain none")
        if self.split not in SPLITS:
            raise ValueError(f"split {self.split!r} is not known; allowed: {', '.join(SPLITS)}")

    @property
    def weight_temperature(self) -> float:
        if self.tau_w is not None:
            return self.tau_w
        return {"separation_f1": 0.5, "margin_clamped": 1.0}.get(self.scheme, 0.05)


PRESETS: dict[str, CalmConfig] = {
    # calm's default: separation prior blended with vote F1, pulled towards SAV's vote by shot count.
    "calm": CalmConfig(),
    # The paper's recipe as its reference scripts ran it (the support file passed as the
    # validation file, so reliability is in-sample), with its ESC-50 settings.
    "paper": CalmConfig(
        tau=0.03,
        scheme="margin_clamped",
        tau_w=0.5,
        top_k=20,
        reliability_from="support",
        sav_shrinkage=0.0,
        combiner="vote",
    ),
    # calm 0.1's default, kept for comparison: leave-one-out clamped margins at tau 0.07.
    "calm-0.1": CalmConfig(
        tau=0.07,
        scheme="margin_clamped",
        tau_w=1.0,
        top_k=20,
        reliability_from="leave-one-out",
        sav_shrinkage=0.0,
        combiner="vote",
    ),
}
