"""Tiny FLUX-architecture pipeline with random, seeded weights (docs/DESIGN.md §5).

Every component is built from code plus the committed word list `vocab.txt`, so nothing is
downloaded. The result is a plain diffusers `FluxPipeline`: the same code path as FLUX.1-dev,
only smaller. Tests call `tiny_flux_components` to get in-memory models quickly;
`build_tiny_pipeline` saves them in diffusers layout: the random starting point that
`mosaic_studio.train.build_default` trains into the embedded default.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
from tokenizers import AddedToken, Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerFast, T5Config, T5EncoderModel

from mosaic_studio.files import replace_dir

VOCAB_PATH = Path(__file__).with_name("vocab.txt")

# Special tokens spelled as in the real CLIP and T5 tokenizers.
CLIP_BOS, CLIP_EOS = "<|startoftext|>", "<|endoftext|>"
T5_PAD, T5_EOS = "<pad>", "</s>"
UNK = "<unk>"

# FLUX.1-dev's scheduler config: resolution-dependent shift ("mu") between these bounds.
FLUX_DEV_SCHEDULER = dict(
    num_train_timesteps=1000,
    shift=3.0,
    use_dynamic_shifting=True,
    base_shift=0.5,
    max_shift=1.15,
    base_image_seq_len=256,
    max_image_seq_len=4096,
)


@dataclass(frozen=True)
class TinyFluxConfig:
    """Sizes of the tiny pipeline; validated on construction."""

    # --- transformer (FluxTransformer2DModel) ---
    num_layers: int = 2  # double-stream blocks: 2 so "early vs. all blocks" supervision differs
    num_single_layers: int = 2  # single-stream blocks: present so their LoRA targets exist
    attention_head_dim: int = 16  # per-head width; RoPE splits it into axes_dims_rope
    num_attention_heads: int = 4  # several heads so head-averaging in the attention probe matters
    joint_attention_dim: int = 64  # T5 width fed to context_embedder (4096 in FLUX.1-dev)
    pooled_projection_dim: int = 32  # CLIP pooled width fed to the time/text embedder (768 in FLUX)
    axes_dims_rope: tuple[int, int, int] = (4, 6, 6)  # RoPE dims for (index, row, col) ids
    guidance_embeds: bool = False  # trained from scratch, not guidance-distilled like FLUX.1-dev
    # --- VAE (AutoencoderKL) ---
    vae_block_out_channels: tuple[int, ...] = (16, 32, 32, 64)  # 4 levels = 8x like FLUX; narrow = fast
    vae_layers_per_block: int = 1  # smallest depth diffusers allows
    latent_channels: int = 4  # FLUX has 16; 4 keeps the VAE tiny
    vae_norm_num_groups: int = 8  # GroupNorm groups; divides every block width, 2+ channels each
    vae_mid_block_attention: bool = True  # diffusers' default; off, the VAE is purely convolutional, so
    # training on crops and decoding whole images see the same operator at every size
    vae_scaling_factor: float = 1.0  # neutral until a trained VAE is calibrated (FLUX: 0.3611)
    vae_shift_factor: float = 0.0  # FluxPipeline reads it; neutral for now (FLUX: 0.1159)
    # --- CLIP text encoder (its width is pooled_projection_dim) ---
    clip_num_layers: int = 2  # enough for a causal encoder to mix context into the EOS token
    clip_num_heads: int = 2  # must divide pooled_projection_dim
    clip_intermediate_size: int = 64  # MLP width, 2x hidden
    clip_max_length: int = 77  # CLIP's fixed context; FluxPipeline pads every prompt to it
    # --- T5 encoder (its width is joint_attention_dim) ---
    t5_num_layers: int = 2  # tiny but still more than one layer of context mixing
    t5_num_heads: int = 4  # must divide joint_attention_dim
    t5_d_ff: int = 128  # gated-GELU MLP width, 2x d_model
    t5_max_length: int = 128  # tokenizer_2 model_max_length (FLUX.1-dev uses up to 512)

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.type == "int" and (not isinstance(value, int) or value <= 0):
                raise ValueError(f"TinyFluxConfig.{f.name} must be a positive int, got {value!r}")
        rope, vae = self.axes_dims_rope, self.vae_block_out_channels
        _check(len(rope) == 3, "axes_dims_rope", "needs 3 entries (index, row, col)")
        _check(all(d > 0 and d % 2 == 0 for d in rope), "axes_dims_rope", "entries must be even (RoPE pairs)")
        _check(
            sum(rope) == self.attention_head_dim,
            "axes_dims_rope",
            f"must sum to attention_head_dim={self.attention_head_dim}, got {sum(rope)}",
        )
        _check(
            len(vae) >= 2,
            "vae_block_out_channels",
            "needs at least 2 levels: the VAE downsamples 2^(levels-1)x (4 levels = 8x, like FLUX)",
        )
        _check(
            all(c > 0 and c % self.vae_norm_num_groups == 0 for c in vae),
            "vae_block_out_channels",
            f"each must be a multiple of vae_norm_num_groups={self.vae_norm_num_groups}",
        )
        _check(
            self.pooled_projection_dim % self.clip_num_heads == 0,
            "clip_num_heads",
            "must divide pooled_projection_dim (the CLIP width)",
        )
        _check(
            self.joint_attention_dim % self.t5_num_heads == 0,
            "t5_num_heads",
            "must divide joint_attention_dim (the T5 width)",
        )
        _check(self.vae_scaling_factor > 0, "vae_scaling_factor", "must be positive")

    @property
    def transformer_in_channels(self) -> int:
        """FLUX packs each 2x2 patch of latents into one token: 4 * latent_channels features."""
        return 4 * self.latent_channels


def _check(ok: bool, field_name: str, why: str) -> None:
    if not ok:
        raise ValueError(f"TinyFluxConfig.{field_name}: {why}")


# ---------------------------------------------------------------- tokenizers


def _pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    """Split on whitespace, then each punctuation mark and each digit is its own word."""
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Punctuation("isolated"),  # "dog," -> "dog", ","
            pre_tokenizers.Digits(individual_digits=True),  # "12" -> "1", "2"
        ]
    )


def load_vocab(path: str | os.PathLike = VOCAB_PATH) -> list[str]:
    """Read the word list: one lowercase token per line, unique, not special, never split."""
    words = Path(path).read_text(encoding="utf-8").splitlines()
    seen: set[str] = set()
    split = _pre_tokenizer()
    for lineno, word in enumerate(words, 1):
        # An entry the pre-tokenizer splits, or an uppercase one, could never be matched.
        whole = [piece for piece, _ in split.pre_tokenize_str(word)] == [word]
        if not whole or word != word.lower() or word in seen or word in (CLIP_BOS, CLIP_EOS, T5_PAD, T5_EOS, UNK):
            raise ValueError(
                f"{path}:{lineno}: bad vocabulary entry {word!r} (empty, split, uppercase, duplicate or special)"
            )
        seen.add(word)
    if not words:
        raise ValueError(f"{path}: empty vocabulary")
    return words


def _word_level(vocab: dict[str, int], specials: list[str]) -> Tokenizer:
    """Whole-word tokenizer: NFKC + lowercase, `_pre_tokenizer` splits, unknown words -> <unk>."""
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = _pre_tokenizer()
    # Registered as special so the pre-tokenizer never splits "<|endoftext|>" and decode can skip them.
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    return tok


def build_clip_tokenizer(words: list[str], max_length: int = 77) -> PreTrainedTokenizerFast:
    """CLIP-style: `<|startoftext|> words <|endoftext|>`, padded with `<|endoftext|>`.

    Ids: words, then <unk>, BOS, EOS. EOS is the highest id like in real CLIP (49407), so both of
    CLIPTextModel's pooling rules (first EOS id; legacy argmax of ids) pick the EOS position. Unknown
    words get their own <unk> rather than CLIP's <|endoftext|>: otherwise the first unknown word
    would be taken for the EOS and pooled.
    """
    vocab = {w: i for i, w in enumerate([*words, UNK, CLIP_BOS, CLIP_EOS])}
    tok = _word_level(vocab, [UNK, CLIP_BOS, CLIP_EOS])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{CLIP_BOS} $A {CLIP_EOS}",
        pair=f"{CLIP_BOS} $A {CLIP_EOS} {CLIP_EOS}:1 $B:1 {CLIP_EOS}:1",  # CLIP/RoBERTa pair layout
        special_tokens=[(CLIP_BOS, vocab[CLIP_BOS]), (CLIP_EOS, vocab[CLIP_EOS])],
    )
    # transformers 5's CLIPTokenizer rebuilds a byte-level BPE on load and rejects a WordLevel
    # model, so the generic fast class is used: it saves and loads tokenizer.json verbatim.
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=CLIP_BOS,
        eos_token=CLIP_EOS,
        pad_token=CLIP_EOS,
        unk_token=UNK,
        model_max_length=max_length,
        padding_side="right",
        truncation_side="right",
    )


def build_t5_tokenizer(words: list[str], max_length: int = 128) -> PreTrainedTokenizerFast:
    """T5-style: `words </s>`, <pad> = 0, </s> = 1, <unk> = 2 as in the real T5 vocabulary."""
    vocab = {w: i for i, w in enumerate([T5_PAD, T5_EOS, UNK, *words])}
    tok = _word_level(vocab, [T5_PAD, T5_EOS, UNK])
    tok.post_processor = processors.TemplateProcessing(
        single=f"$A {T5_EOS}",
        pair=f"$A {T5_EOS} $B:1 {T5_EOS}:1",
        special_tokens=[(T5_EOS, vocab[T5_EOS])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=T5_EOS,
        pad_token=T5_PAD,
        unk_token=UNK,
        model_max_length=max_length,
        padding_side="right",
        truncation_side="right",
    )


# ---------------------------------------------------------------- models


@contextmanager
def _seeded(seed: int, salt: int):
    """Seed the global CPU RNG for one component, leaving the caller's RNG state untouched.

    Each component gets its own stream, so changing one never changes the weights of another.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed * 1000 + salt)
        yield


def build_vae(cfg: TinyFluxConfig) -> AutoencoderKL:
    levels = len(cfg.vae_block_out_channels)
    return AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=tuple(cfg.vae_block_out_channels),
        layers_per_block=cfg.vae_layers_per_block,
        latent_channels=cfg.latent_channels,
        norm_num_groups=cfg.vae_norm_num_groups,
        scaling_factor=cfg.vae_scaling_factor,
        shift_factor=cfg.vae_shift_factor,
        use_quant_conv=False,
        use_post_quant_conv=False,  # FLUX's VAE has no quant convs
        mid_block_add_attention=cfg.vae_mid_block_attention,
    )


def build_transformer(cfg: TinyFluxConfig) -> FluxTransformer2DModel:
    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=cfg.transformer_in_channels,
        num_layers=cfg.num_layers,
        num_single_layers=cfg.num_single_layers,
        attention_head_dim=cfg.attention_head_dim,
        num_attention_heads=cfg.num_attention_heads,
        joint_attention_dim=cfg.joint_attention_dim,
        pooled_projection_dim=cfg.pooled_projection_dim,
        guidance_embeds=cfg.guidance_embeds,
        axes_dims_rope=tuple(cfg.axes_dims_rope),
    )


def build_clip_text_encoder(cfg: TinyFluxConfig, tokenizer: PreTrainedTokenizerFast) -> CLIPTextModel:
    """Token ids in the config come from the tokenizer: pooling looks up `eos_token_id`."""
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.pooled_projection_dim,
        intermediate_size=cfg.clip_intermediate_size,
        projection_dim=cfg.pooled_projection_dim,
        num_hidden_layers=cfg.clip_num_layers,
        num_attention_heads=cfg.clip_num_heads,
        max_position_embeddings=cfg.clip_max_length,
        hidden_act="quick_gelu",  # as in CLIP ViT-L/14, FLUX's text encoder
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,  # never 2 here, so the legacy argmax pooling is unused
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config)


def build_t5_encoder(cfg: TinyFluxConfig, tokenizer: PreTrainedTokenizerFast) -> T5EncoderModel:
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=cfg.joint_attention_dim,
        d_kv=cfg.joint_attention_dim // cfg.t5_num_heads,
        d_ff=cfg.t5_d_ff,
        num_layers=cfg.t5_num_layers,
        num_heads=cfg.t5_num_heads,
        feed_forward_proj="gated-gelu",  # T5 v1.1, as FLUX's t5-v1_1-xxl
        dropout_rate=0.0,
        tie_word_embeddings=False,  # T5 v1.1 unties the LM head (unused by the encoder anyway)
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
        use_cache=False,
    )
    return T5EncoderModel(config)


def tiny_flux_components(config: TinyFluxConfig | None = None, seed: int = 0) -> dict:
    """The `FluxPipeline(**components)` dict; the same seed gives bitwise identical weights."""
    cfg = config or TinyFluxConfig()
    words = load_vocab()
    tokenizer = build_clip_tokenizer(words, cfg.clip_max_length)
    tokenizer_2 = build_t5_tokenizer(words, cfg.t5_max_length)
    with _seeded(seed, 1):
        vae = build_vae(cfg)
    with _seeded(seed, 2):
        text_encoder = build_clip_text_encoder(cfg, tokenizer)
    with _seeded(seed, 3):
        text_encoder_2 = build_t5_encoder(cfg, tokenizer_2)
    with _seeded(seed, 4):
        transformer = build_transformer(cfg)
    return dict(
        scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_DEV_SCHEDULER),
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2.eval(),
        tokenizer_2=tokenizer_2,
        transformer=transformer.eval(),
        image_encoder=None,
        feature_extractor=None,
    )


# ---------------------------------------------------------------- saving

BUILD_INFO = "mosaic_tiny.json"  # provenance written next to model_index.json


def build_tiny_pipeline(out_dir: str | os.PathLike, config: TinyFluxConfig | None = None, seed: int = 0) -> Path:
    """Save the tiny pipeline (safetensors) to `out_dir`, replacing it atomically."""
    cfg = config or TinyFluxConfig()
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Build beside out_dir so the final rename stays on one filesystem.
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        FluxPipeline(**tiny_flux_components(cfg, seed)).save_pretrained(tmp, safe_serialization=True)
        info = {"builder": "mosaic_studio.mosaic.tiny", "seed": seed, "config": dataclasses.asdict(cfg)}
        (tmp / BUILD_INFO).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        _make_readable(tmp)
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _make_readable(root: Path) -> None:
    """mkdtemp and the weight writers create owner-only modes; an asset must be world-readable."""
    root.chmod(0o755)
    for p in root.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)


def dir_size(path: str | os.PathLike) -> int:
    """Total bytes of the files under `path`."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())
