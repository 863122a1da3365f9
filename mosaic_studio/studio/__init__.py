"""MOSAIC Studio, the UI side: everything `app.py` delegates to.

Library code (no Gradio import):
  cli         flags and environment variables of `python app.py`
  loading     the pipeline for the app, with optional bitsandbytes quantization
  references  uploads → checked reference images, the preprocessed preview
  generation  one generation: pipeline call, attention recording, PNGs with metadata
  metadata    prompt, seed and settings as PNG text chunks
  examples    the bundled examples in mosaic_studio/assets/examples
  background  optional background removal (a segmentation backend, when installed)
  session     per-browser-session state: a generation and its attention maps
  inspector   the Attention tab's logic: clicks → reference tokens → heatmap, overview
  heatmap     colormap overlays: one token's attention, the per-reference overview
  canvas      layouts of clickable image strips and of the reference/target review canvas
  drawing     numbered, coloured point pairs and lines on the review canvas
  proposals   attention-proposed correspondences → a review-store sample
  review      the annotator's draft of one review: select, move, add, delete, judge, undo
  annotate    the Annotate tab's logic: open a store sample on the canvas, clicks, save, progress
  store_files image paths of the review store (relative to its folder)
  report      error rates, agreement and export from the review store
  space       Hugging Face Spaces integration (spaces.GPU when present)

Gradio glue (layout, events, gr.Error): generate_tab, attention_tab, annotate_tab.
"""
