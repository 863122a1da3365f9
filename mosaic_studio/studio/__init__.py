"""MOSAIC Studio, the UI side: everything `app.py` delegates to.

Library code (no Gradio import):
  options      flags and environment variables of `python app.py`
  quantization the pipeline for the app, optionally quantized
               (torchao int8 on CPU or CUDA; bitsandbytes 8/4-bit on CUDA)
  references   uploads → checked reference images, the preprocessed preview
  generation   one generation: pipeline call, attention recording, PNGs with metadata
  metadata     prompt, seed and settings as PNG text chunks
  examples     the bundled examples in mosaic_studio/assets/examples
  background   optional background removal (a segmentation backend, when installed)
  session      per-browser-session state: a generation, its reference images and attention maps
  inspector    the Attention tab's logic: clicks → reference tokens → heatmap, overview
  heatmap      colormap overlays: one token's attention, the per-reference overview
  canvas       layouts of clickable image strips and of the reference/target review canvas
  drawing      numbered, coloured point pairs and lines on the review canvas
  proposals    attention-proposed correspondences → a review-store sample
  review       the annotator's draft of one review: select, move, add, delete, judge, undo
  annotation   the Annotate tab's logic: open a store sample on the canvas, clicks, save, progress
  store_files  image paths of the review store (relative to its folder)
  report       error rates, agreement and export from the review store
  local_server a demo served on a free local port, for the app tests and benchmarks
  space        Hugging Face Spaces integration (spaces.GPU when present)

Gradio glue (layout, events, gr.Error):
  app          `build_demo` (the three tabs in one gr.Blocks) and the `mosaic-studio` command
  tabs/        one module per tab: generate, attention, annotate; and views, the handlers' named
               results (NamedTuples) from which each event's outputs list is built
"""
