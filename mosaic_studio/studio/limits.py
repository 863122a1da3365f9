"""What one request may ask of the studio, sized for a 16 GB Hugging Face Space (CPU RAM).

Every limit the app enforces lives here, so a Space with more memory changes one file. Each is
checked on the server (a client can skip the browser's checks) before any heavy work.
"""

from __future__ import annotations

from mosaic_studio.annotator.store import ReviewStore
from mosaic_studio.mosaic.validation import FLUX_MAX_SEQUENCE_LENGTH

# Uploads: gradio refuses a bigger file while it is still streaming in (HTTP 413), so it never
# reaches the disk whole. 20 MB holds any camera JPEG or a 12 MP PNG.
MAX_UPLOAD_MB = 20
MAX_UPLOAD_BYTES = MAX_UPLOAD_MB * 1024 * 1024  # gradio's own "20mb"

# Decoded pixels per request, summed over its references and read from the image headers
# before any decoding. Decoding and preprocessing take ~9 bytes a pixel at peak (RGB(A) copies,
# EXIF rotation, the subject crop), so six 12 MP phone photos cost ~0.7 GB: with one generation
# and one preview at a time that stays well inside 16 GB next to the model. A single image is
# also held to mosaic.images.MAX_IMAGE_PIXELS (40 MP).
MAX_REQUEST_PIXELS = 6 * 12_000_000

# The prompt: T5 sees at most the model's max_sequence_length tokens (FLUX: 512) and silently
# drops the rest, so a longer prompt is refused rather than cut. The character cap comes first
# and is cheap: it keeps a huge prompt from holding the generation slot while it is tokenised
# (512 T5 tokens are rarely more than ~2,000 characters of English).
MAX_PROMPT_CHARS = 2_000
MAX_PROMPT_TOKENS = FLUX_MAX_SEQUENCE_LENGTH  # lowered to the pipeline's own tokenizer limit when smaller

# Annotator names go into the review store's append-only audit log; the store enforces the same cap.
MAX_NAME_CHARS = ReviewStore.MAX_ACTOR_CHARS

# The reference preview decodes every upload on each change of the file list: serve one at a
# time (its own queue, apart from the light events) so parallel previews cannot add up in memory.
PREVIEWS_AT_ONCE = 1
PREVIEW_CONCURRENCY_ID = "preview"
