"""Plain dataclass configs for a run, with a JSON round trip.

A run's manifest (`ensemble.json`) stores one `RunConfig`; training, sampling and the
app read every setting from it, never from module constants.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class DataConfig:
    dataset: str = "mnist"  # mnist | fashion-mnist | digits | folder:PATH
    n_train: int = 128  # N training images, class-balanced subset
    image_size: int = 16  # images are resized to image_size x image_size
    channels: int = 1  # 1 = grayscale, 3 = RGB
    seed: int = 0  # seed of the class-balanced draw


@dataclass
class ModelConfig:
    block_out_channels: tuple[int, ...] = (16, 32, 32)
    layers_per_block: int = 1
    norm_num_groups: int = 8
    attention: bool = False  # self-attention in the mid block and the lowest resolution

    def unet_kwargs(self, image_size: int, channels: int) -> dict[str, Any]:
        """Arguments of `diffusers.UNet2DModel` for this config."""
        depth = len(self.block_out_channels)
        down = ["DownBlock2D"] * depth
        up = ["UpBlock2D"] * depth
        if self.attention:
            down[-1], up[0] = "AttnDownBlock2D", "AttnUpBlock2D"
        return dict(
            sample_size=image_size,
            in_channels=channels,
            out_channels=channels,
            block_out_channels=tuple(self.block_out_channels),
            layers_per_block=self.layers_per_block,
            norm_num_groups=self.norm_num_groups,
            down_block_types=tuple(down),
            up_block_types=tuple(up),
            add_attention=self.attention,
        )


@dataclass
class EnsembleConfig:
    n_members: int = 16  # n: bits per code, one member per bit
    weight: int = 8  # h: Hamming weight of every code
    code_seed: int = 0


@dataclass
class TrainConfig:
    steps: int = 2000  # optimiser steps per member
    batch_size: int = 64
    lr: float = 1e-3
    lr_schedule: str = "constant"  # constant | cosine (decays to 0 at the last step)
    warmup_steps: int = 100
    init: str = "shared"  # shared | independent | pretrained
    pretrain_steps: int = 0  # init="pretrained": steps of the base model on held-out images
    pretrain_batch_size: int = 64
    replay: float = 0.0  # share of each member batch drawn from the held-out images
    seed: int = 0
    num_train_timesteps: int = 1000
    checkpoint_every: int = 250


@dataclass
class SampleConfig:
    num_inference_steps: int = 50
    clip_sample: bool = True
    combine: str = "mean"  # mean | mixture: how each step combines the members (sampling.py)


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        parts = {}
        for f in dataclasses.fields(cls):
            sub_cls = f.default_factory  # type: ignore[misc]
            parts[f.name] = _sub_from_dict(sub_cls, d.get(f.name, {}))
        return cls(**parts)

    @classmethod
    def from_json(cls, text: str) -> RunConfig:
        return cls.from_dict(json.loads(text))


def _sub_from_dict(sub_cls: type, d: dict[str, Any]) -> Any:
    known = {f.name for f in dataclasses.fields(sub_cls)}
    unknown = set(d) - known
    if unknown:
        raise ValueError(f"unknown {sub_cls.__name__} fields: {sorted(unknown)}")
    kw = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
    return sub_cls(**kw)
