"""What each training stage trains, its loss, and what it exports.

vae      the AutoencoderKL (the tiny default only; FLUX.1-dev ships its own)
decoder  the VAE's decoder alone, on a frozen encoder: the latents (and so every transformer
         trained on them) stay valid while the decoder polishes how they are drawn
base  text-to-image pretraining of the whole transformer, L_diff
lora  the MOSAIC reference LoRA on a frozen base, L = L_diff + α·L_SCA + β·L_MD (Eq. 15)
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
import torch.nn.functional as F

from mosaic_studio.mosaic.latents import encode_latents, encode_reference_pixels
from mosaic_studio.mosaic.lora import reference_lora_config
from mosaic_studio.mosaic.lora_io import DEFAULT_ADAPTER
from mosaic_studio.mosaic.losses import mdl_loss_batch, scal_loss_batch
from mosaic_studio.mosaic.native import write_trained_settings
from mosaic_studio.mosaic.probe import AttentionProbe
from mosaic_studio.mosaic.transformer import grid_position_ids, mosaic_forward
from mosaic_studio.train.config import PROBE_SITES, TrainConfig
from mosaic_studio.train.data import Batch
from mosaic_studio.train.flow import flow_matching_loss, noisy_latents, sample_timesteps

STATS_BATCHES = 8  # batches used to calibrate the VAE's latent shift and scale
PER_SAMPLE_LOSS, PER_SAMPLE_T = (
    "diffusion_per_sample",
    "t_per_sample",
)  # logs keys the trainer bins by noise level, not CSV columns


def per_sample_logs(prediction: torch.Tensor, f: dict) -> dict:
    """The trainer's per-noise-level loss bins: each sample's L_diff and timestep, detached."""
    with torch.no_grad():
        return {
            PER_SAMPLE_LOSS: flow_matching_loss(prediction, f["x0"], f["noise"], reduction="per_sample"),
            PER_SAMPLE_T: f["t"].detach(),
        }


class Stage:
    """Base: subclasses name the trainable module, compute the loss and export the result.
    `loss` returns (loss, logs): logs are detached tensors (the trainer syncs them to the host
    at its log interval only), optionally with PER_SAMPLE_LOSS and PER_SAMPLE_T, (B,) each."""

    def __init__(self, config: TrainConfig):
        self.config = config

    def trainable(self, pipe) -> torch.nn.Module:
        raise NotImplementedError

    def loss(self, pipe, module, batch: Batch, generator: torch.Generator, step: int):
        raise NotImplementedError

    def export(self, pipe, module, out_dir: Path, source) -> None:
        """Write the trained result as a complete pipeline folder (source: the run's BatchSource)."""
        raise NotImplementedError

    def encode_text(self, pipe, captions):
        with torch.no_grad():
            return pipe.encode_prompt(
                prompt=captions,
                prompt_2=None,
                device=pipe.transformer.device,
                max_sequence_length=self.config.model.max_sequence_length,
            )


def copy_pipeline(source: str, out_dir: Path) -> None:
    """The exported pipeline starts as a copy of the one trained from (local folders only)."""
    if Path(source).is_dir() and not out_dir.exists():
        shutil.copytree(source, out_dir, ignore=shutil.ignore_patterns(".*"))


class VaeStage(Stage):
    def trainable(self, pipe):
        pipe.vae.requires_grad_(True).train()
        return pipe.vae

    def loss(self, pipe, module, batch, generator, step):
        # The VAE is convolutional, so random crops teach it as well as whole targets at a
        # fraction of the cost; references (white backgrounds, centred subjects) come whole.
        side = self.config.data.ref_size
        top, left = (int(v) for v in torch.randint(0, batch.target.shape[-1] - side + 1, (2,), generator=generator))
        images = [batch.target[..., top : top + side, left : left + side]]
        if batch.reference_pixels is not None:
            images.append(batch.reference_pixels[:, 0])  # one reference per sample keeps the two halves balanced
        losses = []
        for pixels in images:
            posterior = self.encode(module, pixels)
            recon = module.decode(posterior.sample(generator)).sample
            reconstruction = F.mse_loss(recon, pixels) + F.l1_loss(recon, pixels)
            losses.append(reconstruction + self.config.loss.kl_weight * posterior.kl().mean())
        loss = torch.stack(losses).mean()
        return loss, {"loss": loss.detach()}

    def encode(self, module, pixels):
        return module.encode(pixels).latent_dist

    def export(self, pipe, module, out_dir, source):
        """Calibrate shift/scale so latents are ~N(0, 1), as FLUX's VAE config does, then save."""
        with torch.no_grad():
            module.eval()
            latents = torch.cat(
                [module.encode(source.batch(i).target).latent_dist.mode() for i in range(STATS_BATCHES)]
            )
        module.register_to_config(shift_factor=latents.mean().item(), scaling_factor=1.0 / latents.std().item())
        copy_pipeline(self.config.model.pretrained, out_dir)
        module.save_pretrained(out_dir / "vae")


class DecoderStage(VaeStage):
    """The VAE's decoder on its frozen encoder: the same crops, sampled latents and loss as the
    vae stage (its KL term is then a constant), and no recalibration at export, so every latent,
    and the shift and scale the transformer was trained with, stay exactly as they were."""

    def trainable(self, pipe):
        vae = pipe.vae
        vae.requires_grad_(False).eval()
        for part in (vae.decoder, vae.post_quant_conv):
            if part is not None:  # post_quant_conv is None when the config turns it off
                part.requires_grad_(True).train()
        return vae

    def encode(self, module, pixels):
        with torch.no_grad():  # no graph through the encoder: it does not train
            return module.encode(pixels).latent_dist

    def export(self, pipe, module, out_dir, source):
        module.eval()
        copy_pipeline(self.config.model.pretrained, out_dir)
        module.save_pretrained(out_dir / "vae")


class BaseStage(Stage):
    def trainable(self, pipe):
        pipe.transformer.requires_grad_(True).train()
        return pipe.transformer

    def flow_inputs(self, pipe, batch, generator, t=None):
        """Everything a denoising forward needs; `t` fixes the timestep (evaluation)."""
        sampled = self.config.loss.target_latents == "sample"
        x0, grid = encode_latents(pipe, batch.target, generator=generator if sampled else None)
        noise = torch.randn(x0.shape, generator=generator).to(x0)
        if t is None:
            t = sample_timesteps(
                len(x0),
                x0.shape[1],
                pipe.scheduler.config,
                generator,
                self.config.loss.logit_mean,
                self.config.loss.logit_std,
            )
        t = torch.as_tensor(t).expand(len(x0)).to(x0)
        prompt, pooled, text_ids = self.encode_text(pipe, batch.captions)
        guidance = torch.ones_like(t) if pipe.transformer.config.guidance_embeds else None  # as the authors train
        return dict(
            x0=x0, noise=noise, t=t, grid=grid, prompt=prompt, pooled=pooled, text_ids=text_ids, guidance=guidance
        )

    def forward(self, module, f, reference_latents=None, reference_ids=None):
        img_ids = grid_position_ids(*f["grid"], device=f["x0"].device, dtype=f["x0"].dtype)
        x_t = noisy_latents(f["x0"], f["noise"], f["t"])
        return mosaic_forward(
            module,
            x_t,
            encoder_hidden_states=f["prompt"],
            pooled_projections=f["pooled"],
            timestep=f["t"],
            img_ids=img_ids,
            txt_ids=f["text_ids"],
            guidance=f["guidance"],
            reference_latents=reference_latents,
            reference_ids=reference_ids,
        )

    def loss(self, pipe, module, batch, generator, step):
        f = self.flow_inputs(pipe, batch, generator)
        # data.reference_batches: some batches carry references, through the base weights (no LoRA)
        references = (
            encode_reference_pixels(pipe, batch.reference_pixels)
            if batch.reference_pixels is not None
            else (None, None)
        )
        prediction = self.forward(module, f, *references)
        loss = flow_matching_loss(prediction, f["x0"], f["noise"])
        return loss, {"loss": loss.detach(), "diffusion": loss.detach(), **per_sample_logs(prediction, f)}

    def export(self, pipe, module, out_dir, source):
        copy_pipeline(self.config.model.pretrained, out_dir)
        module.save_pretrained(out_dir / "transformer")


class LoraStage(BaseStage):
    ADAPTER = DEFAULT_ADAPTER

    def trainable(self, pipe):
        transformer = pipe.transformer
        transformer.requires_grad_(False)
        if self.ADAPTER not in (getattr(transformer, "peft_config", None) or {}):
            with torch.random.fork_rng(devices=[]):  # the LoRA's random init depends on the run's seed only
                torch.manual_seed(self.config.data.seed)
                transformer.add_adapter(reference_lora_config(self.config.model.lora_rank), adapter_name=self.ADAPTER)
        transformer.set_adapter(self.ADAPTER)
        for name, param in transformer.named_parameters():
            param.requires_grad_("lora_" in name)
        return transformer.train()

    def beta(self, step: int) -> float:
        start, end = self.config.loss.beta_ramp
        if end <= start:
            return self.config.loss.beta
        return self.config.loss.beta * min(max((step - start) / (end - start), 0.0), 1.0)

    def predict(self, pipe, module, batch, f, probe: bool):
        """Flow prediction with the batch's references; with `probe`, also the Eq. 8 rows of the
        batch's correspondence points, (B, K·P, N_tgt), on the configured blocks."""
        reference_latents, ref_ids = encode_reference_pixels(pipe, batch.reference_pixels)
        if not probe:
            return self.forward(module, f, reference_latents, ref_ids), None
        recorder = AttentionProbe(batch.rows)
        with recorder.attached(module, PROBE_SITES[self.config.loss.blocks](module)):
            prediction = self.forward(module, f, reference_latents, ref_ids)
        return prediction, recorder.attention()

    def loss(self, pipe, module, batch, generator, step):
        f = self.flow_inputs(pipe, batch, generator)
        if batch.reference_pixels is None:  # reference drop: a plain text-to-image sample
            prediction = self.forward(module, f)
            loss = flow_matching_loss(prediction, f["x0"], f["noise"])
            zero = torch.zeros((), device=loss.device)
            return loss, {
                "loss": loss.detach(),
                "diffusion": loss.detach(),
                "scal": zero,
                "mdl": zero,
                **per_sample_logs(prediction, f),
            }
        k = batch.num_refs
        cfg = self.config.loss
        prediction, attention = self.predict(pipe, module, batch, f, probe=cfg.alpha > 0 or self.beta(step) > 0)
        diffusion = flow_matching_loss(prediction, f["x0"], f["noise"])
        scal = mdl = torch.zeros((), device=diffusion.device)
        if attention is not None:
            scal = scal_loss_batch(attention, batch.tgt_index, batch.ref_index, k, batch.valid, cfg.scal_reduction)
            mdl = mdl_loss_batch(attention, batch.ref_index, k, batch.valid, cfg.divergence)
        loss = diffusion + cfg.alpha * scal + self.beta(step) * mdl
        return loss, {
            "loss": loss.detach(),
            "diffusion": diffusion.detach(),
            "scal": scal.detach(),
            "mdl": mdl.detach(),
            **per_sample_logs(prediction, f),
        }

    def export(self, pipe, module, out_dir, source):
        copy_pipeline(self.config.model.pretrained, out_dir)
        pipe.save_mosaic_lora(out_dir, adapter_name=self.ADAPTER)
        data, trained_from = self.config.data, self.config.model.pretrained  # the sizes it learnt at: its native ones
        write_trained_settings(
            out_dir, target_size=data.target_size, reference_size=data.ref_size, trained_from=trained_from
        )


STAGE_CLASSES = {"vae": VaeStage, "decoder": DecoderStage, "base": BaseStage, "lora": LoraStage}
