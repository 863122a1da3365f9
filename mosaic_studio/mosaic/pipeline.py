"""`MosaicPipeline`: FLUX text-to-image with 0–6 subject references (MOSAIC).

A diffusers `FluxPipeline` whose denoiser is the multi-branch MOSAIC forward. The same class
loads FLUX.1-dev (+ the authors' LoRA) and the project's embedded tiny default.
"""

from __future__ import annotations

# First, before diffusers: importing `loading` silences the torchvision notice that transformers
# prints when diffusers' FLUX pipeline is imported (loading.quiet_torchvision_notice).
from mosaic_studio.mosaic.loading import quiet_text_encoder_lora_notice  # isort: split

import logging
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from diffusers.pipelines.flux.pipeline_flux import FluxPipeline, retrieve_timesteps
from diffusers.utils import BaseOutput

from mosaic_studio.mosaic.attention import ReferenceCache, install_mosaic_processors
from mosaic_studio.mosaic.data.semalign import MAX_REFERENCES  # the official model was trained with up to six
from mosaic_studio.mosaic.images import (
    REFERENCE_CROP_TOLERANCE,
    check_crop_tolerance,
    load_image,
    preprocess_reference,
)
from mosaic_studio.mosaic.latents import encode_latents, pixels_per_token, resolution_shift
from mosaic_studio.mosaic.lora_io import DEFAULT_ADAPTER, MosaicLoraMixin
from mosaic_studio.mosaic.native import FLUX_DEV_SETTINGS, NativeSettings, bundled_lora, read_native_settings
from mosaic_studio.mosaic.probe import all_double_blocks
from mosaic_studio.mosaic.record import AttentionRecord, AttentionRecorder
from mosaic_studio.mosaic.transformer import (
    TIMESTEP_SCALE,
    check_reference_strengths,
    mosaic_forward,
    reference_position_ids,
)
from mosaic_studio.mosaic.validation import (
    CallInputs,
    check_call_inputs,
    max_sequence_limit,
)

OFFICIAL_REFERENCE_SIZE = 512  # references are preprocessed to this size for the official LoRA
logger = logging.getLogger(__name__)


def default_settings(pipe) -> dict:
    """The model's native settings (`MosaicPipeline.native_settings`) as side, steps, guidance."""
    native = pipe.native_settings
    return {
        "side": min(native.height, native.width),
        "steps": native.num_inference_steps,
        "guidance": native.guidance_scale,
    }


@dataclass
class MosaicPipelineOutput(BaseOutput):
    images: Any
    attention: AttentionRecord | None = None


class MosaicPipeline(MosaicLoraMixin, FluxPipeline):
    """FLUX + MOSAIC multi-reference conditioning. See `__call__`."""

    max_references = MAX_REFERENCES

    def __init__(
        self,
        scheduler,
        vae,
        text_encoder,
        tokenizer,
        text_encoder_2,
        tokenizer_2,
        transformer,
        image_encoder=None,
        feature_extractor=None,
    ):
        # FluxPipeline's own signature: diffusers' from_pretrained reads the components from it
        super().__init__(
            scheduler=scheduler,
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            text_encoder_2=text_encoder_2,
            tokenizer_2=tokenizer_2,
            transformer=transformer,
            image_encoder=image_encoder,
            feature_extractor=feature_extractor,
        )
        # Once, here (constructor and from_pretrained alike); a processor set later is respected.
        install_mosaic_processors(self.transformer)
        self._native_settings = FLUX_DEV_SETTINGS  # from_pretrained reads a folder's own record
        self.mosaic_lora_sources: dict[str, str] = {}  # adapter name → the file or repo it came from

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *, load_bundled_lora: bool = True, **kwargs):
        """diffusers' `from_pretrained`, plus what a local model folder records about itself
        (`mosaic.native`): `native_settings` from its `mosaic_defaults.json` (else FLUX.1-dev's),
        and the MOSAIC LoRA it ships (`mosaic_lora.safetensors`), loaded as the active adapter with
        one log line saying so, unless `load_bundled_lora=False` (then load one yourself with
        `load_mosaic_lora`). A hub id is loaded as diffusers does: FLUX.1-dev needs
        `load_mosaic_lora("ByteDance-FanQie/MOSAIC", weight_name="subject_512.safetensors")`."""
        native = read_native_settings(pretrained_model_name_or_path)  # before the weights: a bad record fails fast
        pipe = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        if native is not None:
            pipe.native_settings = native
        lora = bundled_lora(pretrained_model_name_or_path) if load_bundled_lora else None
        if lora is not None:
            pipe.load_mosaic_lora(lora.parent, weight_name=lora.name)
            logger.info(
                "loaded the MOSAIC LoRA bundled in the model folder: %s (load_bundled_lora=False skips it)", lora
            )
        return pipe

    def load_mosaic_lora(
        self, path_or_hub_id, weight_name: str | None = None, adapter_name: str = DEFAULT_ADAPTER, **kwargs
    ):
        """`MosaicLoraMixin.load_mosaic_lora`, recording where the adapter came from
        (`mosaic_lora_sources`) and without diffusers' notice that the LoRA has no text-encoder
        keys (a MOSAIC LoRA never has: it acts on the transformer only)."""
        with quiet_text_encoder_lora_notice():
            super().load_mosaic_lora(path_or_hub_id, weight_name=weight_name, adapter_name=adapter_name, **kwargs)
        self.mosaic_lora_sources[adapter_name] = "/".join(str(part) for part in (path_or_hub_id, weight_name) if part)

    @property
    def native_settings(self) -> NativeSettings:
        """The settings this model was trained for: what a call uses for every setting it leaves
        out (height, width, reference_size, num_inference_steps, guidance_scale)."""
        return self._native_settings

    @native_settings.setter
    def native_settings(self, settings: NativeSettings) -> None:
        if not isinstance(settings, NativeSettings):
            raise TypeError(f"native_settings must be a mosaic.native.NativeSettings, got {type(settings).__name__}")
        self._native_settings = settings

    def _native_unless_given(self, **given) -> tuple:
        """`given`'s values in order, each None replaced by that native setting (`is None`, not
        `or`: an explicit 0 is an error to report, not a request for the default)."""
        native = self.native_settings
        return tuple(getattr(native, name) if value is None else value for name, value in given.items())

    @property
    def pixels_per_token(self) -> int:
        """Image pixels per latent token side: the VAE factor times FLUX's 2×2 packing."""
        return pixels_per_token(self)

    def default_reference_size(self, height: int, width: int) -> int:
        """The output's shorter side, capped at the official 512, rounded to whole tokens."""
        side = min(height, width, OFFICIAL_REFERENCE_SIZE)
        return max(self.pixels_per_token, side // self.pixels_per_token * self.pixels_per_token)

    def native_reference_size(self, height: int, width: int) -> int:
        """The reference size of a call that gives none: the model's native one, but no larger
        than `default_reference_size` (a reference is never larger than the output's shorter side)."""
        return min(self.native_settings.reference_size, self.default_reference_size(height, width))

    @torch.no_grad()
    def encode_references(
        self, reference_images: Sequence, size: int, device, dtype, crop_tolerance: int = REFERENCE_CROP_TOLERANCE
    ):
        """Preprocess (the official subject crop and white pad, `images.preprocess_reference`, with
        its `crop_tolerance`) and VAE-encode reference images.

        Returns reference_latents (K, N_ref, C), position ids (K·N_ref, 3) and the (rows, cols)
        token grid. The posterior mode is used so a generation depends only on its seed.
        """
        images = [preprocess_reference(image, size, crop_tolerance=crop_tolerance) for image in reference_images]
        pixels = self.image_processor.preprocess(images, height=size, width=size)
        reference_latents, grid = encode_latents(self, pixels, device=device, dtype=dtype)  # (K, N_ref, 4·C_lat)
        ids = reference_position_ids(len(images), *grid, device=device, dtype=dtype)
        return reference_latents, ids, grid

    def _denoise(
        self,
        *,
        latents,
        prompt_embeds,
        pooled_projections,
        text_ids,
        latent_image_ids,
        timestep,
        guidance,
        reference_latents,
        reference_ids,
        reference_strengths=None,
        reference_cache=None,
    ):
        return mosaic_forward(
            self.transformer,
            latents,
            encoder_hidden_states=prompt_embeds,
            pooled_projections=pooled_projections,
            timestep=timestep,
            img_ids=latent_image_ids,
            txt_ids=text_ids,
            guidance=guidance,
            reference_latents=reference_latents,
            reference_ids=reference_ids,
            reference_strengths=reference_strengths,
            reference_cache=reference_cache,
        )

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] = "",
        reference_images: Sequence | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        num_images_per_prompt: int = 1,
        output_type: str = "pil",
        record_attention: bool = False,
        callback_on_step_end: Callable[..., dict] | None = None,
        *,
        negative_prompt: str = "",
        reference_size: int | None = None,
        reference_crop_tolerance: int = REFERENCE_CROP_TOLERANCE,
        attention_blocks: Sequence[str] | None = None,
        attention_steps: tuple[int, int] | None = None,
        max_sequence_length: int | None = None,
        reference_cache: bool = False,
        reference_strengths: Sequence[float] | None = None,
    ) -> MosaicPipelineOutput:
        """Generate images containing every referenced subject.

        reference_images: 0–6 subject images (PIL images, arrays or file paths), one per subject.
        height, width, num_inference_steps, guidance_scale: None (default) takes the model's
        `native_settings` (its folder's `mosaic_defaults.json`; else FLUX.1-dev's 512×512, 28 steps,
        guidance 3.5); reference_size None takes `native_reference_size(height, width)`.
        reference_crop_tolerance: `images.preprocess_reference`'s crop_tolerance; 0 (default) crops
        as the official inference, `images.TOLERANT_CROP` ignores a JPEG's noisy white background.
        guidance_scale is embedded guidance for guidance-distilled models (FLUX.1-dev) and
        classifier-free guidance otherwise (uncond = `negative_prompt` with the same
        references; ≤ 1 disables it); it must be finite, in [0, 100]. max_sequence_length (T5
        tokens; default and upper bound: FLUX's 512 or the T5 tokenizer's limit if smaller) and
        num_inference_steps (1–1000) are checked too, before any work. record_attention keeps, per reference, its
        (N_ref × N_tgt) map averaged over heads, `attention_blocks` (default: every double
        block) and `attention_steps` = [start, end) (default: all steps).
        reference_cache: fast mode (docs/DESIGN.md §7, the authors' `kv_cache`): references attend
        only to themselves, so their keys and values are computed at the first step and reused,
        and later steps run text and target only. Faster with many references; not the group
        mask the model was trained with. reference_strengths: one s_k ≥ 0 per reference (default
        1): text and target queries weigh reference k's keys by s_k, 0 removes the reference.
        """
        # 1. Check inputs (references are decoded here so a bad upload fails before any work)
        if reference_images is not None and not isinstance(reference_images, (list, tuple)):
            raise TypeError(f"reference_images must be a list of images, got {type(reference_images).__name__}")
        reference_images = [
            load_image(image, name=f"reference {i + 1}") for i, image in enumerate(reference_images or [])
        ]
        check_crop_tolerance(reference_crop_tolerance)
        if not isinstance(reference_cache, bool):
            raise TypeError(f"reference_cache must be True or False, got {reference_cache!r}")
        reference_strengths = check_reference_strengths(reference_strengths, len(reference_images))
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        height, width, num_inference_steps, guidance_scale = self._native_unless_given(
            height=height, width=width, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale
        )
        reference_size = reference_size or self.native_reference_size(height, width)
        attention_steps = attention_steps or (0, num_inference_steps)
        # T5 pads every prompt to this length; FLUX's 512 is wasted on a tokenizer that stops earlier.
        # `is None`, not `or`: an explicit 0 is an error to report, not a request for the default.
        if max_sequence_length is None:
            max_sequence_length = max_sequence_limit(self)
        check_call_inputs(
            self,
            CallInputs(
                prompts=prompts,
                reference_images=reference_images,
                height=height,
                width=width,
                reference_size=reference_size,
                num_inference_steps=num_inference_steps,
                num_images_per_prompt=num_images_per_prompt,
                output_type=output_type,
                attention_steps=attention_steps,
                callback=callback_on_step_end,
                guidance_scale=guidance_scale,
                max_sequence_length=max_sequence_length,
            ),
        )
        device = self._execution_device
        batch = len(prompts) * num_images_per_prompt
        embedded_guidance = bool(self.transformer.config.guidance_embeds)
        do_cfg = not embedded_guidance and guidance_scale > 1.0

        # 2. Encode prompts (and the unconditional prompt for classifier-free guidance)
        prompt_embeds, pooled, text_ids = self.encode_prompt(
            prompt=prompts,
            prompt_2=None,
            device=device,
            num_images_per_prompt=num_images_per_prompt,
            max_sequence_length=max_sequence_length,
        )
        if do_cfg:
            neg_embeds, neg_pooled, neg_text_ids = self.encode_prompt(
                prompt=[negative_prompt] * len(prompts),
                prompt_2=None,
                device=device,
                num_images_per_prompt=num_images_per_prompt,
                max_sequence_length=max_sequence_length,
            )
        dtype = prompt_embeds.dtype

        # 3. Encode references
        reference_latents = reference_ids = None
        ref_grid = (0, 0)
        if reference_images:
            reference_latents, reference_ids, ref_grid = self.encode_references(
                reference_images, reference_size, device, dtype, reference_crop_tolerance
            )
            reference_latents = reference_latents.unsqueeze(0).expand(batch, -1, -1, -1)  # (K, …) → (B, K, N_ref, C)

        # 4. Prepare latents and timesteps
        num_channels_latents = self.transformer.config.in_channels // 4
        latents, image_ids = self.prepare_latents(batch, num_channels_latents, height, width, dtype, device, generator)
        sigmas = np.linspace(1.0, 1 / num_inference_steps, num_inference_steps)
        mu = resolution_shift(latents.shape[1], self.scheduler.config)
        timesteps, num_inference_steps = retrieve_timesteps(
            self.scheduler, num_inference_steps, device, sigmas=sigmas, mu=mu
        )
        self.scheduler.set_begin_index(0)
        guidance = (
            torch.full((batch,), guidance_scale, device=device, dtype=torch.float32) if embedded_guidance else None
        )

        # 5. Attention recording
        recorder = None
        if record_attention and reference_images:
            blocks = list(attention_blocks) if attention_blocks else all_double_blocks(self.transformer)
            recorder = AttentionRecorder(self.transformer, blocks, attention_steps)

        # Fast mode: one cache per conditioning (the reference stream sees the pooled prompt);
        # queries are kept only when the probe will read them at later steps.
        caches = {"cond": None, "uncond": None}
        if reference_cache and reference_images:
            caches = {"cond": ReferenceCache(keep_queries=recorder is not None), "uncond": ReferenceCache()}

        # 6. Denoising loop
        self._num_timesteps = len(timesteps)
        with self.progress_bar(total=len(timesteps)) as progress_bar:
            for i, t in enumerate(timesteps):
                timestep = (t.expand(batch) / TIMESTEP_SCALE).to(latents.dtype)
                shared = dict(
                    latents=latents,
                    latent_image_ids=image_ids,
                    timestep=timestep,
                    guidance=guidance,
                    reference_latents=reference_latents,
                    reference_ids=reference_ids,
                    reference_strengths=reference_strengths,
                )
                recording = recorder.attached(step=i) if recorder is not None and recorder.wants(i) else nullcontext()
                with recording:  # only the conditional pass is recorded
                    flow = self._denoise(
                        prompt_embeds=prompt_embeds,
                        pooled_projections=pooled,
                        text_ids=text_ids,
                        reference_cache=caches["cond"],
                        **shared,
                    )
                if do_cfg:
                    uncond = self._denoise(
                        prompt_embeds=neg_embeds,
                        pooled_projections=neg_pooled,
                        text_ids=neg_text_ids,
                        reference_cache=caches["uncond"],
                        **shared,
                    )
                    flow = uncond + guidance_scale * (flow - uncond)
                latents = self.scheduler.step(flow, t, latents, return_dict=False)[0]

                if callback_on_step_end is not None:
                    outputs = callback_on_step_end(self, i, t, {"latents": latents}) or {}
                    latents = outputs.pop("latents", latents)
                progress_bar.update()

        # 7. Decode
        if output_type == "latent":
            images = latents
        else:
            unpacked = self._unpack_latents(latents, height, width, self.vae_scale_factor)
            unpacked = unpacked / self.vae.config.scaling_factor + self.vae.config.shift_factor
            decoded = self.vae.decode(unpacked.to(self.vae.dtype), return_dict=False)[0]
            images = self.image_processor.postprocess(decoded, output_type=output_type)
        self.maybe_free_model_hooks()

        record = None
        if recorder is not None:
            target_grid = (height // self.pixels_per_token, width // self.pixels_per_token)
            record = recorder.record(len(reference_images), ref_grid, target_grid, self.pixels_per_token)
            record = replace(
                record,
                reference_cache=reference_cache,
                reference_strengths=reference_strengths or (1.0,) * len(reference_images),
            )
        return MosaicPipelineOutput(images=images, attention=record)
