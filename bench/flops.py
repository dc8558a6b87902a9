"""FLOPs per output pixel, counted from the network itself rather than quoted from a paper."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from model.network import FRLIEConfig

# Any multiple of 4 gives the same per-pixel count: every layer's work scales with the area.
COUNT_SIZE = 128


@dataclass(frozen=True)
class Work:
    macs_per_pixel: float
    flops_per_pixel: float
    method: str

    def gflop(self, pixels: int) -> float:
        return self.flops_per_pixel * pixels / 1e9

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def per_pixel(config: FRLIEConfig) -> Work:
    """Count one forward with torch's FlopCounterMode (convolutions; 1 MAC = 2 FLOPs)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from bench.models import torch_model

    network = torch_model(config)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        network(torch.zeros(1, 3, COUNT_SIZE, COUNT_SIZE))
    flops = counter.get_total_flops() / COUNT_SIZE**2
    return Work(
        macs_per_pixel=flops / 2,
        flops_per_pixel=flops,
        method="torch.utils.flop_counter.FlopCounterMode on one forward: convolutions only; BatchNorm, "
        "activations and tanh (a few FLOPs per value against hundreds per convolution output) are not counted",
    )
