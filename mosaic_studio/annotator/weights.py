"""Pretrained models of the annotator (detector, SAM, DINOv2): loading with a clear error.

Nothing is downloaded at run time on an offline machine. A model is named by a Hugging Face id
or a local folder; when its weights are neither in a local folder nor in the Hugging Face cache,
`MissingWeightsError` says which model, how to provide it, and which backends work without it.
"""

from __future__ import annotations

from typing import Any

OFFLINE_SEGMENTERS = ("ground-truth", "plain-background", "attention")
OFFLINE_EXTRACTORS = ("dift", "sift", "patch")


class MissingWeightsError(RuntimeError):
    """The weights of `model_id` are not available on this machine."""

    def __init__(
        self, what: str, model_id: str, option: str, alternatives: tuple[str, ...], cause: BaseException | None = None
    ):
        self.model_id = model_id
        reason = f" ({type(cause).__name__}: {str(cause).splitlines()[0]})" if cause else ""
        super().__init__(
            f"{what} weights {model_id!r} are not available here{reason}. Provide them either as a "
            f"local folder ({option} PATH, a save_pretrained or Hugging Face snapshot folder), or "
            f"fill the Hugging Face cache once where the hub is reachable: "
            f"`huggingface-cli download {model_id}` (HF_HOME chooses the cache folder). Without "
            f"them, use an offline backend: {', '.join(alternatives)}."
        )


def load_pretrained(loader: Any, model_id: str, what: str, option: str, alternatives: tuple[str, ...], **kwargs) -> Any:
    """`loader.from_pretrained(model_id)`, with MissingWeightsError when nothing can be found.

    transformers raises OSError (FileNotFoundError, or its own "not a local folder and not a
    valid model identifier") for absent weights; other errors are real problems and propagate.
    """
    try:
        return loader.from_pretrained(model_id, **kwargs)
    except OSError as error:
        raise MissingWeightsError(what, str(model_id), option, alternatives, error) from error
