"""Parameters of the ERF step (params.yaml `erf:`): one frozen section per method, defaults = params.yaml."""

from __future__ import annotations

from dataclasses import dataclass, field

from cafe.errors import CafeError

METHODS: dict[str, str] = {  # name -> "module:class"
    "attnlrp": "cafe.erf.attnlrp:AttnLRP",
    "ig": "cafe.erf.methods:IntegratedGradients",
    "kernelshap": "cafe.erf.kernelshap:KernelShap",
    "gradient": "cafe.erf.methods:Gradient",
    "activation": "cafe.erf.methods:Activation",
}
BASELINES = ("activation",)  # always computed beside the chosen methods, so not a choice in erf.methods
ATTRIBUTION_METHODS = tuple(name for name in METHODS if name not in BASELINES)  # the choices of erf.methods

ATTENTION_RULES = ("attnlrp", "cp")
KERNELSHAP_SOLVERS = ("batched", "captum")


@dataclass(frozen=True)
class GammaConfig:
    """LRP-gamma per group of linear layers (0 = epsilon rule); a scalar in params sets every group."""

    attention: float = 0.0  # qkv in-projection and out-projection
    mlp: float = 0.0  # c_fc and c_proj


@dataclass(frozen=True)
class AttnLRPConfig:
    """AttnLRP rules: epsilon stabiliser, gamma on linear layers, and the rule inside attention."""

    epsilon: float = 1e-6
    gamma: GammaConfig = field(default_factory=GammaConfig)
    attention: str = "attnlrp"  # attnlrp: softmax + uniform rules; cp: relevance only along the values (CP-LRP)

    def __post_init__(self) -> None:
        if isinstance(self.gamma, (int, float)):
            object.__setattr__(self, "gamma", GammaConfig(float(self.gamma), float(self.gamma)))
        if not isinstance(self.gamma, GammaConfig):
            raise CafeError(f"params: erf.attnlrp.gamma must be a number or {{attention, mlp}}, got {self.gamma!r}")
        if self.epsilon < 0 or min(self.gamma.attention, self.gamma.mlp) < 0:
            raise CafeError(f"params: erf.attnlrp.epsilon and gamma must be >= 0, got {self.epsilon}, {self.gamma}")
        if self.attention not in ATTENTION_RULES:
            raise CafeError(
                f"params: erf.attnlrp.attention must be one of {list(ATTENTION_RULES)}, got {self.attention!r}"
            )


@dataclass(frozen=True)
class IGConfig:
    """Integrated Gradients from the mean canvas."""

    steps: int = 32


@dataclass(frozen=True)
class KernelShapConfig:
    """KernelSHAP with one player per patch, absent patches set to the mean canvas."""

    samples: int = 256
    seed: int = 0
    solver: str = "batched"  # batched: cafe.erf.kernelshap's own, on the device | captum: the reference
    forward_batch: int = (
        256  # most images per truncated forward (batched; fewer on a CPU: kernelshap.CPU_FORWARD_BYTES)
    )

    def __post_init__(self) -> None:
        if self.solver not in KERNELSHAP_SOLVERS:
            raise CafeError(
                f"params: erf.kernelshap.solver must be one of {list(KERNELSHAP_SOLVERS)}, got {self.solver!r}"
            )


@dataclass(frozen=True)
class GradientConfig:
    """Gradient x input, or plain saliency |gradient|."""

    times_input: bool = True


@dataclass(frozen=True)
class ErfConfig:
    """Which methods run, how many targets share a forward/backward, and each method's parameters."""

    methods: tuple[str, ...] = ("attnlrp", "ig", "kernelshap", "gradient")
    batch_size: int = 16
    attnlrp: AttnLRPConfig = field(default_factory=AttnLRPConfig)
    ig: IGConfig = field(default_factory=IGConfig)
    kernelshap: KernelShapConfig = field(default_factory=KernelShapConfig)
    gradient: GradientConfig = field(default_factory=GradientConfig)

    def __post_init__(self) -> None:
        for name, value in (
            ("batch_size", self.batch_size),
            ("ig.steps", self.ig.steps),
            ("kernelshap.samples", self.kernelshap.samples),
            ("kernelshap.forward_batch", self.kernelshap.forward_batch),
        ):
            if value < 1:
                raise CafeError(f"params: erf.{name} must be >= 1, got {value}")
        unknown = [m for m in self.methods if m not in ATTRIBUTION_METHODS]
        if unknown or not self.methods:
            raise CafeError(
                f"params: erf.methods has unknown method(s) {unknown}; known: {list(ATTRIBUTION_METHODS)}"
                if unknown
                else "params: erf.methods must name at least one method"
            )
