"""Tiny random-weight SmolVLA, PI0 and PI05 that build offline (tests, CPU smoke runs).

Nothing comes from the hub. What each needs (measured with LeRobot 0.6.1, see
``shared/notes/vla-bridge``):

- **SmolVLA**: ``vlm_model_name`` must be a local folder with a SmolVLM config and processor,
  even with ``load_vlm_weights=False``. :func:`write_tiny_smolvlm` writes one (a 4-layer,
  64-wide text model, a 1-layer 32-wide vision tower, a word-level tokenizer).
- **PI0 / PI05**: LeRobot hard-codes the Gemma sizes (``get_gemma_config`` knows gemma_2b and
  gemma_300m), SigLIP's sizes, 8 attention heads, and the gated ``google/paligemma-3b-pt-224``
  tokenizer. :func:`install_tiny_pi_patches` shrinks the Gemma and SigLIP configs and points
  the tokenizer step at a local word-level tokenizer folder (whose path the saved processor
  then records, so a saved tiny checkpoint reloads offline once the patches are installed).
  The patches only change sizes; the modelling code that trains and samples is LeRobot's.

A checkpoint folder made from a tiny config carries ``habc_tiny.json``; :func:`prepare_load`
re-installs the patches before LeRobot rebuilds the model from it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

TINY_MARKER = "habc_tiny.json"
POLICY_TYPES = ("smolvla", "pi0", "pi05")
_WORDS = (
    "pick up the cube put it in bin reach goal hand over to left right arm with red a and "
    "task state action : ; , . habc episode"
)


def make_tokenizer(extra_special: dict[str, str] | None = None) -> Any:
    """A word-level ``PreTrainedTokenizerFast`` built locally (no hub)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<unk>": 1, "<bos>": 2, "<eos>": 3}
    words = _WORDS.split() + [str(i) for i in range(256)] + list((extra_special or {}).values())
    for word in words:
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    kwargs: dict[str, Any] = dict(
        pad_token="<pad>", unk_token="<unk>", bos_token="<bos>", eos_token="<eos>"
    )
    if extra_special:
        kwargs["extra_special_tokens"] = extra_special
    return PreTrainedTokenizerFast(tokenizer_object=tok, **kwargs)


def write_tiny_smolvlm(folder: Path) -> Path:
    """A tiny SmolVLM 'model folder' (config + processor, no weights) for SmolVLA."""
    from transformers import (
        SmolVLMConfig,
        SmolVLMImageProcessor,
        SmolVLMProcessor,
        SmolVLMVideoProcessor,
    )

    special = {
        "fake_image_token": "<fake_token_around_image>",
        "image_token": "<image>",
        "global_image_token": "<global-img>",
        "end_of_utterance_token": "<end_of_utterance>",
        "video_token": "<video>",
    }
    tok = make_tokenizer(special)
    config = SmolVLMConfig(
        text_config=dict(
            model_type="llama",
            vocab_size=len(tok),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=4,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=32,
            max_position_embeddings=512,
            pad_token_id=tok.pad_token_id,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=64,
            patch_size=16,
        ),
        scale_factor=2,
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        vocab_size=len(tok),
    )
    image_proc = SmolVLMImageProcessor(
        size={"longest_edge": 64}, max_image_size={"longest_edge": 64}, do_image_splitting=False
    )
    proc = SmolVLMProcessor(
        image_processor=image_proc,
        tokenizer=tok,
        video_processor=SmolVLMVideoProcessor(),
        image_seq_len=4,
    )
    folder.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(folder)
    proc.save_pretrained(folder)
    return folder


def install_tiny_pi_patches(tokenizer_dir: Path) -> None:
    """Shrink PI0/PI05's Gemma + SigLIP and use a local tokenizer (idempotent)."""
    import lerobot.policies.pi0.modeling_pi0 as m0
    import lerobot.policies.pi0.processor_pi0 as p0
    import lerobot.policies.pi05.modeling_pi05 as m5
    import lerobot.policies.pi05.processor_pi05 as p5
    from lerobot.processor import TokenizerProcessorStep

    if not (tokenizer_dir / "tokenizer.json").is_file():
        tokenizer_dir.mkdir(parents=True, exist_ok=True)
        make_tokenizer().save_pretrained(tokenizer_dir)
    for m in (m0, m5):
        if getattr(m, "_habc_tiny", False):
            continue
        # 8 heads: compute_layer_complete hard-codes them.
        tiny = m.GemmaConfig(
            width=64, depth=2, mlp_dim=128, num_heads=8, num_kv_heads=1, head_dim=8
        )
        m.get_gemma_config = lambda variant, tiny=tiny: tiny
        base = m.PaliGemmaForConditionalGenerationWithPiGemma

        class TinyPaliGemma(base):  # type: ignore[misc, valid-type]
            def __init__(self, config: Any) -> None:
                vc = config.vision_config
                vc.hidden_size, vc.intermediate_size = 32, 64
                vc.num_hidden_layers, vc.num_attention_heads, vc.patch_size = 1, 2, 16
                vc.projection_dim = config.text_config.hidden_size
                super().__init__(config)

        m.PaliGemmaForConditionalGenerationWithPiGemma = TinyPaliGemma
        m._habc_tiny = True
    local = str(tokenizer_dir)

    def local_tokenizer_step(tokenizer_name: str | None = None, **kw: Any) -> Any:
        return TokenizerProcessorStep(tokenizer_name=local, **kw)

    p0.TokenizerProcessorStep = local_tokenizer_step
    p5.TokenizerProcessorStep = local_tokenizer_step


def tiny_config(
    kind: str,
    input_features: dict[str, Any],
    output_features: dict[str, Any],
    chunk_size: int,
    assets: Path,
) -> Any:
    """A tiny config of ``kind`` (``smolvla`` / ``pi0`` / ``pi05``); ``assets`` holds the
    local tokenizer / SmolVLM folders it refers to."""
    if kind not in POLICY_TYPES:
        raise ValueError(f"policy type {kind!r} is not one of {POLICY_TYPES}")
    common = dict(
        device="cpu",
        input_features=input_features,
        output_features=output_features,
        chunk_size=chunk_size,
        n_action_steps=chunk_size,
        tokenizer_max_length=32,
    )
    if kind == "smolvla":
        from lerobot.policies.smolvla.configuration_smolvla import SmolVLAConfig

        vlm = write_tiny_smolvlm(assets / "tiny_smolvlm")
        return SmolVLAConfig(
            vlm_model_name=str(vlm),
            load_vlm_weights=False,
            num_vlm_layers=4,
            resize_imgs_with_padding=(64, 64),
            **common,
        )
    install_tiny_pi_patches(assets / "tiny_tokenizer")
    if kind == "pi0":
        from lerobot.policies.pi0.configuration_pi0 import PI0Config as Config
    else:
        from lerobot.policies.pi05.configuration_pi05 import PI05Config as Config
    return Config(image_resolution=(64, 64), dtype="float32", **common)


def mark_tiny(folder: Path, kind: str, assets: Path) -> None:
    (folder / TINY_MARKER).write_text(json.dumps({"type": kind, "assets": str(assets)}))


def prepare_load(folder: Path) -> None:
    """Before LeRobot rebuilds a checkpoint: re-install the tiny patches it needs, if any."""
    marker = folder / TINY_MARKER
    if marker.is_file():
        doc = json.loads(marker.read_text())
        if doc["type"] in ("pi0", "pi05"):
            install_tiny_pi_patches(Path(doc["assets"]) / "tiny_tokenizer")
