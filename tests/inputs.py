"""Random inputs of the tiny transformer in MOSAIC's layout."""

from dataclasses import dataclass

import torch

from mosaic_studio.mosaic.transformer import grid_position_ids, reference_position_ids


@dataclass
class Batch:
    hidden_states: torch.Tensor
    encoder_hidden_states: torch.Tensor
    pooled_projections: torch.Tensor
    timestep: torch.Tensor
    img_ids: torch.Tensor
    txt_ids: torch.Tensor
    reference_latents: torch.Tensor | None
    reference_ids: torch.Tensor | None
    guidance: torch.Tensor | None = None

    def stock_kwargs(self) -> dict:
        names = (
            "hidden_states",
            "encoder_hidden_states",
            "pooled_projections",
            "timestep",
            "img_ids",
            "txt_ids",
            "guidance",
        )
        return {name: getattr(self, name) for name in names}

    def mosaic_kwargs(self) -> dict:
        return {**self.stock_kwargs(), "reference_latents": self.reference_latents, "reference_ids": self.reference_ids}


def random_batch(transformer, batch=2, grid=(4, 6), text_len=7, num_refs=0, ref_grid=(3, 3), seed=0, guidance=None):
    g = torch.Generator().manual_seed(seed)
    cfg = transformer.config
    tokens = grid[0] * grid[1]
    refs = ref_ids = None
    if num_refs:
        refs = torch.randn(batch, num_refs, ref_grid[0] * ref_grid[1], cfg.in_channels, generator=g)
        ref_ids = reference_position_ids(num_refs, *ref_grid)
    return Batch(
        hidden_states=torch.randn(batch, tokens, cfg.in_channels, generator=g),
        encoder_hidden_states=torch.randn(batch, text_len, cfg.joint_attention_dim, generator=g),
        pooled_projections=torch.randn(batch, cfg.pooled_projection_dim, generator=g),
        timestep=torch.rand(batch, generator=g),
        img_ids=grid_position_ids(*grid),
        txt_ids=torch.zeros(text_len, 3),
        reference_latents=refs,
        reference_ids=ref_ids,
        guidance=None if guidance is None else torch.full((batch,), guidance),
    )
